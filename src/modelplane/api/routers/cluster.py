"""/api/v1/cluster: the servers of this installation, which one leads and since when, and the
database and artifact store they share."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy.engine import make_url
from starlette.concurrency import run_in_threadpool

from modelplane.api.deps import allow
from modelplane.api.services import Services
from modelplane.domain import Principal
from modelplane.security.policy import Action

SEEN_WITHIN_S = 30.0  # a server silent longer is not listed


class ServerOut(BaseModel):
    id: str
    url: str
    started_at: float  # seconds since the epoch
    seen_s_ago: float
    leader: bool
    this: bool  # the server that answered


class ClusterOut(BaseModel):
    servers: list[ServerOut]
    leader: str | None  # the id of the server running the controller
    leader_since: float | None  # when it took the lease (seconds since the epoch)
    lease_token: int | None  # grows with every change of leader
    database: str  # the URL, without its password
    storage: str  # s3://bucket/prefix, or the local folder


def create_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1/cluster", tags=["cluster"])

    @router.get("", response_model=ClusterOut)
    async def cluster(_: Annotated[Principal, Depends(allow(Action.NODES))]) -> ClusterOut:
        """The servers sharing this database, which one leads, and what they share."""
        leadership, settings = services.leadership, services.settings
        assert leadership is not None
        now = time.time()
        store = leadership.store
        servers = await run_in_threadpool(store.servers, now - SEEN_WITHIN_S)
        lease = await run_in_threadpool(store.lease)
        holder = lease.holder if lease is not None and lease.expires_at > now else None
        database = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
        return ClusterOut(
            servers=[
                ServerOut(
                    id=s.id,
                    url=s.url,
                    started_at=s.started_at,
                    seen_s_ago=round(max(0.0, now - s.seen_at), 1),
                    leader=s.id == holder,
                    this=s.id == leadership.me.id,
                )
                for s in servers
            ],
            leader=holder,
            leader_since=lease.acquired_at if holder is not None and lease else None,
            lease_token=lease.token if holder is not None and lease else None,
            database=database,
            storage=settings.storage_url or str(settings.blob_dir),
        )

    return router
