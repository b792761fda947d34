"""/api/v1/conversions (jobs started by pushes of non-ONNX models) and /api/v1/samples."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from modelplane.api.deps import allow
from modelplane.api.routers.models import declared_size
from modelplane.api.schemas import ConversionOut, SamplesOut
from modelplane.api.services import Services
from modelplane.domain import Principal
from modelplane.errors import PayloadTooLarge
from modelplane.registry.conversions import SAMPLES_MAX_BYTES, missing_conversion
from modelplane.security.policy import Action, in_scope


def create_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["conversions"])
    conversions = services.conversions

    @router.get("/conversions", response_model=list[ConversionOut])
    def list_conversions(
        who: Annotated[Principal, Depends(allow(Action.READ))],
    ) -> list[ConversionOut]:
        return [ConversionOut.of(c) for c in conversions.list() if in_scope(who, c.model)]

    @router.get("/conversions/{conversion_id}", response_model=ConversionOut)
    def show(
        conversion_id: str, who: Annotated[Principal, Depends(allow(Action.READ))]
    ) -> ConversionOut:
        found = conversions.get(conversion_id)
        if not in_scope(who, found.model):
            raise missing_conversion(conversion_id)
        return ConversionOut.of(found)

    @router.post("/samples", status_code=201, response_model=SamplesOut)
    async def upload_samples(
        request: Request, who: Annotated[Principal, Depends(allow(Action.PUSH))]
    ) -> SamplesOut:
        """Store sample inputs (.npz, or JSON ``{name: [[...]]}``) for a push's parity check;
        pass the returned digest as ``samples=`` when pushing with the same key."""
        declared = declared_size(request)
        if declared is not None and declared > SAMPLES_MAX_BYTES:
            raise PayloadTooLarge(f"samples are limited to {SAMPLES_MAX_BYTES} bytes")
        staged = services.registry.blobs.stage(SAMPLES_MAX_BYTES)
        try:
            async for chunk in request.stream():
                await run_in_threadpool(staged.write, chunk)
            artifact = await run_in_threadpool(staged.commit)
        except BaseException:
            staged.discard()
            raise
        conversions.samples_uploaded(who.key_id, artifact.digest, artifact.size)
        return SamplesOut(digest=artifact.digest, size=artifact.size)

    return router
