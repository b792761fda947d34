"""/api/v1/deployments/{name}/logs: the collected JSON logs of a deployment's replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from modelplane.api.deps import allow, see_deployment
from modelplane.api.services import Services
from modelplane.domain import Principal
from modelplane.domain.model import name_problem
from modelplane.errors import InvalidInput
from modelplane.security.policy import Action
from modelplane.telemetry.logquery import Follower, LogFilter, parse_since, read

FOLLOW_POLL_S = 0.25
FOLLOW_MAX_S = 3600.0


def create_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1/deployments", tags=["logs"])

    @router.get("/{name}/logs", response_model=None)
    async def logs(
        name: str,
        request: Request,
        who: Annotated[Principal, Depends(allow(Action.LOGS))],
        replica: str | None = None,
        since: Annotated[str | None, Query(description="30s, 10m, 2h, 1d or ISO time")] = None,
        level: Annotated[str | None, Query(description="lowest level shown")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
        follow: bool = False,
    ) -> Any:
        """Log records (newest last); with ``follow`` an NDJSON stream that stays open."""
        if name_problem(name):
            raise InvalidInput(f"invalid deployment name {name!r}")
        # 404 for unknown deployments, and identically for those outside the key's scope
        see_deployment(who, await run_in_threadpool(services.deployments.get, name))
        where = LogFilter(replica, parse_since(since, datetime.now(UTC)), level)
        folder = services.settings.log_dir / name
        if not follow:
            return await run_in_threadpool(read, folder, where, limit)
        follower = Follower(folder, where)
        await run_in_threadpool(follower.start_at_end)
        backlog = await run_in_threadpool(read, folder, where, limit, follower.positions)

        async def stream() -> AsyncIterator[bytes]:
            for record in backlog:
                yield orjson.dumps(record) + b"\n"
            waited = 0.0
            while waited < FOLLOW_MAX_S and not await request.is_disconnected():
                for record in await run_in_threadpool(lambda: list(follower.poll())):
                    yield orjson.dumps(record) + b"\n"
                await asyncio.sleep(FOLLOW_POLL_S)
                waited += FOLLOW_POLL_S

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    return router
