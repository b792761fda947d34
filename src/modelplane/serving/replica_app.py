"""The HTTP adapter of a replica: V2 routes over one DataPlane. Holds no logic of its own."""

from __future__ import annotations

import hmac
import logging

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from modelplane.errors import ModelplaneError, Unauthenticated
from modelplane.serving.body import read_limited
from modelplane.serving.dataplane import DataPlane
from modelplane.serving.responses import JSON, error_response, header_length, infer_response

log = logging.getLogger("modelplane.replica")
TOKEN_HEADER = "x-modelplane-replica-token"  # noqa: S105 (a header name, not a secret)


class ReplicaTokenMiddleware:
    """Only the gateway, which knows the token, may call a replica."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._token:
            given = dict(scope["headers"]).get(TOKEN_HEADER.encode(), b"")
            if not hmac.compare_digest(given, self._token):
                response = error_response(Unauthenticated("missing or wrong replica token"))
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)


def create_replica_app(plane: DataPlane, token: str, max_request_bytes: int) -> ASGIApp:
    async def live(_: Request) -> Response:
        return Response(b"", 200)

    async def ready(_: Request) -> Response:
        return Response(b"", 200 if plane.ready else 503)

    async def model_ready(request: Request) -> Response:
        try:
            plane.check(request.path_params["model"], request.path_params.get("version"))
        except ModelplaneError as exc:
            return error_response(exc)
        return Response(b"", 200 if plane.ready else 503)

    async def metadata(request: Request) -> Response:
        try:
            plane.check(request.path_params["model"], request.path_params.get("version"))
        except ModelplaneError as exc:
            return error_response(exc)
        return Response(orjson.dumps(plane.metadata()), media_type=JSON)

    async def infer(request: Request) -> Response:
        try:
            plane.check(request.path_params["model"], request.path_params.get("version"))
            length = header_length(request.headers.get("inference-header-content-length"))
            body = await read_limited(request, max_request_bytes)
            result = await plane.infer(body, length)
        except ModelplaneError as exc:
            return error_response(exc)
        except Exception:
            log.exception("inference failed")
            return error_response(ModelplaneError("the model failed while running this request"))
        return infer_response(result.body, result.header_length)

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{model}/ready", model_ready),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready),
        Route("/v2/models/{model}", metadata),
        Route("/v2/models/{model}/versions/{version}", metadata),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
    ]
    return ReplicaTokenMiddleware(Starlette(routes=routes), token)
