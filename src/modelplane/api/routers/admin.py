"""/api/v1/admin: operations on the server itself (master key rotation, backups), for admin
keys only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.engine import make_url
from starlette.concurrency import run_in_threadpool

from modelplane import backups
from modelplane.api.deps import allow
from modelplane.api.services import Services
from modelplane.domain import Principal
from modelplane.errors import Conflict
from modelplane.security.policy import Action


class RotationOut(BaseModel):
    rewrapped: int  # data keys re-wrapped under the new master key
    master_key_check: str  # the new master key's check value (not the key)


def create_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1/admin", tags=["admin"])

    @router.post("/rotate-master-key", response_model=RotationOut)
    async def rotate_master_key(
        _: Annotated[Principal, Depends(allow(Action.MANAGE_KEYS))],
    ) -> RotationOut:
        """Re-wrap every blob's data key under a new master key, written to the master key
        file. Serving goes on meanwhile; blobs are not rewritten."""
        keys = services.blob_keys
        if keys is None:
            raise Conflict("encryption at rest is not set up on this server")
        count = await run_in_threadpool(keys.rotate)
        return RotationOut(rewrapped=count, master_key_check=keys.master.check)

    @router.get("/backup", response_class=StreamingResponse)
    async def backup(
        _: Annotated[Principal, Depends(allow(Action.MANAGE_KEYS))],
    ) -> StreamingResponse:
        """A tar archive of the database and every blob it refers to (sealed, with its wrapped
        data key; never the master key), taken while the server runs. Embedded default only:
        on PostgreSQL and S3, back those up with their own tools."""
        settings, keys = services.settings, services.blob_keys
        url = make_url(settings.resolved_database_url)
        if url.get_backend_name() != "sqlite" or settings.storage_url is not None or keys is None:
            raise Conflict(
                "this server keeps its state in PostgreSQL or S3: back those up with their own "
                "tools (pg_dump, the bucket's versioning); see docs/operations.md, Backups"
            )
        snapshot = await run_in_threadpool(
            backups.take_snapshot, Path(str(url.database)), settings.blob_dir,
            settings.work_dir, keys.master,
        )  # fmt: skip
        stamp = snapshot.manifest["created"].replace(":", "").replace("-", "")[:15]
        return StreamingResponse(
            backups.stream(snapshot), media_type="application/x-tar",
            headers={"Content-Disposition": f'attachment; filename="modelplane-{stamp}.tar"'},
        )  # fmt: skip

    return router
