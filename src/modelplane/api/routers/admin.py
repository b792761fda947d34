"""/api/v1/admin: operations on the server itself, for admin keys only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

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

    return router
