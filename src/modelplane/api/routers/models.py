"""/api/v1/models: push, list, show, alias, delete."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from modelplane.api.deps import allow, see_model
from modelplane.api.schemas import (
    AliasIn,
    ConversionOut,
    ModelDetail,
    ModelOut,
    OptimizeIn,
    VersionOut,
)
from modelplane.api.services import Services
from modelplane.convert.base import Optimization
from modelplane.domain import ModelRef, ModelVersion, Principal, parse_pairs
from modelplane.domain.processing import ProcessingError
from modelplane.domain.processing import parse as parse_processing
from modelplane.errors import InvalidInput, PermissionDenied
from modelplane.registry.conversions import ConversionOptions
from modelplane.registry.service import PushRequest
from modelplane.security.policy import Action, authorize, in_scope


def _tags(raw: list[str]) -> dict[str, str]:
    try:
        return parse_pairs(raw, "tag")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def _shape(raw: str | None) -> tuple[int, ...] | None:
    if raw is None:
        return None
    try:
        dims = tuple(int(d) for d in raw.split(","))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise InvalidInput(f"invalid input_shape {raw!r}: use positive integers, e.g. 1,3,32,32")
    return dims


def shown(version: ModelVersion, who: Principal) -> VersionOut:
    """A version as ``who`` may see it: lineage naming a model outside the key's scope is left
    out, as if the version had none (a key learns nothing of models it may not see)."""
    out = VersionOut.of(version)
    if out.parent and not in_scope(who, re.split(r"[:@]", out.parent, maxsplit=1)[0]):
        out.parent = None
    return out


def declared_size(request: Request) -> int | None:
    """The body size the client declared (``Content-Length``), if it declared one."""
    raw = request.headers.get("content-length", "")
    return int(raw) if raw.isdigit() else None


def create_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1/models", tags=["models"])
    registry = services.registry

    @router.post(
        "/{name}/versions",
        status_code=201,
        response_model=VersionOut,
        responses={202: {"model": ConversionOut, "description": "conversion started"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def push(
        name: str,
        request: Request,
        who: Annotated[Principal, Depends(allow(Action.PUSH))],
        format: Annotated[str, Query(description="auto or a source format")] = "auto",
        description: str = "",
        tag: Annotated[list[str] | None, Query(description="KEY=VALUE, repeatable")] = None,
        parent: Annotated[
            str | None, Query(description="lineage: NAME:VERSION this came from")
        ] = None,
        trust_pickle: Annotated[bool, Query(description="allow loading a pickle")] = False,
        samples: Annotated[str | None, Query(description="digest from POST /samples")] = None,
        tolerance: Annotated[float | None, Query(gt=0, description="parity atol/rtol")] = None,
        force: Annotated[bool, Query(description="keep a model that fails parity")] = False,
        input_shape: Annotated[
            str | None, Query(description="example input shape, e.g. 1,3,32,32")
        ] = None,
        allow_duplicate: Annotated[
            bool, Query(description="make a new version even if this content was pushed")
        ] = False,
        precision: Annotated[
            Literal["fp32", "int8", "int4"] | None,
            Query(description="language models: the weights' precision (default fp32)"),
        ] = None,
        preprocess: Annotated[
            str | None,
            Query(description="image:resize=224,normalize=imagenet or audio:rate=16000,..."),
        ] = None,
        label: Annotated[
            list[str] | None, Query(description="class labels in the model's order, repeatable")
        ] = None,
        top_k: Annotated[int, Query(ge=1, le=1000, description="labels in each answer")] = 5,
    ) -> Any:
        """Upload a model file as the request body (streamed; never held whole in memory).
        ONNX becomes a version at once (201); other formats start a conversion (202) that
        ``GET /api/v1/conversions/{id}`` follows."""
        if not in_scope(who, name):
            raise PermissionDenied(f"this key's model scope does not include {name!r}")
        if trust_pickle:
            authorize(who, Action.TRUST_PICKLE)
        try:
            processing = parse_processing(preprocess, label, top_k)
        except ProcessingError as exc:
            raise InvalidInput(str(exc)) from None
        push_request = PushRequest(
            name=name,
            processed=processing is not None,
            source_format=format,
            description=description,
            tags=_tags(tag or []),
            parent=parent,
            created_by=who.name or who.key_id,
            trust_pickle=trust_pickle,
            allow_duplicate=allow_duplicate,
            declared_size=declared_size(request),
        )
        if samples is not None:  # their statistics stay with the version (input guard)
            stats = await run_in_threadpool(services.conversions.input_stats, who.key_id, samples)
            push_request = replace(push_request, input_stats=stats, samples_digest=samples)
        options = ConversionOptions(
            samples, tolerance, force, _shape(input_shape), precision=precision,
            processing=None if processing is None else processing.to_dict(),
        )  # fmt: skip
        try:
            result = await registry.push(
                push_request,
                request.stream(),
                convert=lambda upload: services.conversions.start(push_request, upload, options),
            )
        except Exception:
            services.metrics.pushes.labels("refused").inc()
            raise
        services.metrics.pushes.labels("accepted").inc()
        if isinstance(result, ModelVersion):
            return shown(result, who)
        return JSONResponse(ConversionOut.of(result).model_dump(mode="json"), 202)

    @router.get("", response_model=list[ModelOut])
    def list_models(who: Annotated[Principal, Depends(allow(Action.READ))]) -> list[ModelOut]:
        return [ModelOut.of(m) for m in registry.list_models() if in_scope(who, m.name)]

    @router.get("/{name}", response_model=ModelDetail)
    def show_model(
        name: str, who: Annotated[Principal, Depends(allow(Action.READ))]
    ) -> ModelDetail:
        see_model(who, name)
        model, versions = registry.get_model(name)
        return ModelDetail(
            **ModelOut.of(model).model_dump(), versions=[shown(v, who) for v in versions]
        )

    @router.get("/{name}/versions/{ref}", response_model=VersionOut)
    def show_version(
        name: str, ref: str, who: Annotated[Principal, Depends(allow(Action.READ))]
    ) -> VersionOut:
        """``ref`` is a version number, an alias, or ``latest``."""
        see_model(who, name)
        if ref == "latest":
            parsed = ModelRef(name)
        elif ref.isdigit():
            parsed = ModelRef(name, version=int(ref))
        else:
            parsed = ModelRef(name, alias=ref)
        return shown(registry.resolve(parsed), who)

    @router.post("/{name}/versions/{version}/optimize", status_code=202,
                 response_model=ConversionOut)  # fmt: skip
    async def optimize(
        name: str,
        version: int,
        body: OptimizeIn,
        who: Annotated[Principal, Depends(allow(Action.PUSH))],
    ) -> ConversionOut:
        """Make a new version by graph optimization and/or quantization, or (``auto``) by the
        fastest of every way (structured pruning among them) within the accuracy budget;
        follow the returned conversion for the measured speedup and the accuracy change."""
        see_model(who, name)
        source = await run_in_threadpool(registry.resolve, ModelRef(name, version=version))
        choice = Optimization(body.level, body.quantize,
                              body.max_accuracy_drop if body.auto else None)  # fmt: skip
        samples = None
        if body.samples is not None:
            stats = await run_in_threadpool(
                services.conversions.input_stats, who.key_id, body.samples
            )
            samples = (body.samples, stats)
        job = services.conversions.optimize(source, choice, who.name or who.key_id, samples)
        return ConversionOut.of(job)

    @router.put("/{name}/aliases/{alias}", response_model=VersionOut)
    def set_alias(
        name: str,
        alias: str,
        body: AliasIn,
        who: Annotated[Principal, Depends(allow(Action.ALIAS))],
    ) -> VersionOut:
        see_model(who, name)
        return shown(registry.set_alias(name, body.version, alias), who)

    @router.delete("/{name}/aliases/{alias}", status_code=204)
    def delete_alias(
        name: str, alias: str, who: Annotated[Principal, Depends(allow(Action.ALIAS))]
    ) -> Response:
        see_model(who, name)
        registry.delete_alias(name, alias)
        return Response(status_code=204)

    @router.delete("/{name}/versions/{version}", status_code=204)
    async def delete_version(
        name: str, version: int, who: Annotated[Principal, Depends(allow(Action.DELETE))]
    ) -> Response:
        see_model(who, name)
        await run_in_threadpool(registry.delete_version, name, version)
        return Response(status_code=204)

    @router.delete("/{name}", status_code=204)
    async def delete_model(
        name: str, who: Annotated[Principal, Depends(allow(Action.DELETE))]
    ) -> Response:
        see_model(who, name)
        await run_in_threadpool(registry.delete_model, name)
        return Response(status_code=204)

    return router
