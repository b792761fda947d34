"""The public V2 REST surface of the gateway (a thin adapter over ``Gateway``)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from modelplane.errors import InvalidInput, ModelplaneError
from modelplane.protocol.v2 import EXTENSIONS
from modelplane.serving.body import read_limited
from modelplane.serving.gateway import Gateway
from modelplane.serving.responses import JSON, error_response

PLATFORM = "onnxruntime_onnx"


def create_v2_router(gateway: Gateway, version: str, max_request_bytes: int) -> APIRouter:
    router = APIRouter(tags=["inference (KServe V2)"])

    @router.get("/v2/health/live")
    async def live() -> Response:
        return Response(b"", 200)

    @router.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(b"", 200)

    @router.get("/v2")
    async def server_metadata() -> Response:
        doc = {"name": "modelplane", "version": version, "extensions": EXTENSIONS}
        return Response(orjson.dumps(doc), media_type=JSON)

    def metadata(name: str, version: str | None) -> Response:
        try:
            route = gateway.route(name, version)
        except ModelplaneError as exc:
            return error_response(exc)
        doc: dict[str, Any] = {
            "name": route.name,
            "versions": [route.version],
            "platform": PLATFORM,
            "inputs": [t.to_dict() for t in route.signature.inputs],
            "outputs": [t.to_dict() for t in route.signature.outputs],
        }
        return Response(orjson.dumps(doc), media_type=JSON)

    def model_ready(name: str, version: str | None) -> Response:
        try:
            route = gateway.route(name, version)
        except ModelplaneError as exc:
            return error_response(exc)
        if route.endpoints:
            return Response(b"", 200)
        return error_response(
            InvalidInput(f"model {name!r} is not ready: 0 of {route.desired} replicas ready")
        )

    async def infer(request: Request, name: str, version: str | None) -> Response:
        try:
            route = gateway.route(name, version)
            body = await read_limited(request, max_request_bytes)
            result = await gateway.infer(route, body, dict(request.headers))
        except ModelplaneError as exc:
            return error_response(exc)
        return Response(result.body, result.status, headers=result.headers)

    @router.get("/v2/models/{name}")
    async def model_metadata(name: str) -> Response:
        return metadata(name, None)

    @router.get("/v2/models/{name}/versions/{version}")
    async def version_metadata(name: str, version: str) -> Response:
        return metadata(name, version)

    @router.get("/v2/models/{name}/ready")
    async def model_is_ready(name: str) -> Response:
        return model_ready(name, None)

    @router.get("/v2/models/{name}/versions/{version}/ready")
    async def version_is_ready(name: str, version: str) -> Response:
        return model_ready(name, version)

    @router.post("/v2/models/{name}/infer")
    async def model_infer(request: Request, name: str) -> Response:
        return await infer(request, name, None)

    @router.post("/v2/models/{name}/versions/{version}/infer")
    async def version_infer(request: Request, name: str, version: str) -> Response:
        return await infer(request, name, version)

    return router
