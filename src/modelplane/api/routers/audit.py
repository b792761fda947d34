"""/api/v1/audit: the audit trail (admin only), filtered, or followed as an NDJSON stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from modelplane.api.deps import allow
from modelplane.api.services import Services
from modelplane.domain import Principal
from modelplane.domain.auth import ALL_MODELS
from modelplane.registry.audit import AuditQuery, AuditRecord
from modelplane.security.policy import Action, in_scope
from modelplane.telemetry.logquery import parse_since

FOLLOW_POLL_S = 0.5
FOLLOW_MAX_S = 3600.0


class AuditOut(BaseModel):
    id: int
    at: datetime
    action: str
    key_id: str | None
    key_name: str | None
    source: str
    target: str
    result: str
    detail: str

    @classmethod
    def of(cls, record: AuditRecord) -> AuditOut:
        e = record.entry
        return cls(
            id=record.id, at=e.at, action=e.action, key_id=e.key_id, key_name=e.key_name,
            source=e.source, target=e.target, result=e.result, detail=e.detail,
        )  # fmt: skip


def _visible(who: Principal, record: AuditRecord) -> bool:
    """A key scoped to some models sees only entries about those models."""
    if who.models == ALL_MODELS:
        return True
    target = record.entry.target
    name = target.split(" ", 1)[-1].removeprefix("/api/v1/models/").split("/")[0]
    return in_scope(who, name.split(":")[0])


def create_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["audit"])

    def read(who: Principal, query: AuditQuery) -> tuple[list[dict[str, Any]], int | None]:
        """The entries the caller may see, and the id of the last one read."""
        services.audit.flush()  # what was just done is in the answer
        records = services.audit_log.query(query)
        shown = [AuditOut.of(r).model_dump(mode="json") for r in records if _visible(who, r)]
        return shown, records[-1].id if records else query.after_id

    @router.get("/audit", response_model=list[AuditOut])
    async def audit(
        request: Request,
        who: Annotated[Principal, Depends(allow(Action.AUDIT))],
        since: Annotated[str | None, Query(description="30s, 10m, 2h, 1d or ISO time")] = None,
        key: Annotated[str | None, Query(description="only this key id")] = None,
        action: Annotated[str | None, Query(description="only this action, e.g. denied")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        follow: bool = False,
    ) -> Any:
        """Audit entries (newest last); with ``follow`` an NDJSON stream that stays open."""
        when = parse_since(since, datetime.now(UTC))
        query = AuditQuery(when.astimezone(UTC) if when else None, key, action, None, limit)
        entries, first_last = await run_in_threadpool(read, who, query)
        if not follow:
            return entries

        async def stream() -> AsyncIterator[bytes]:
            last = first_last if first_last is not None else await run_in_threadpool(_newest)
            for entry in entries:
                yield orjson.dumps(entry) + b"\n"
            waited = 0.0
            while waited < FOLLOW_MAX_S and not await request.is_disconnected():
                await asyncio.sleep(FOLLOW_POLL_S)
                waited += FOLLOW_POLL_S
                after = AuditQuery(query.since, key, action, last, 1000)
                more, last_read = await run_in_threadpool(read, who, after)
                last = last_read if last_read is not None else last
                for entry in more:
                    yield orjson.dumps(entry) + b"\n"

        def _newest() -> int:
            newest = services.audit_log.query(AuditQuery(limit=1))
            return newest[-1].id if newest else 0

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    return router
