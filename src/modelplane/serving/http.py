"""The public V2 REST surface of the gateway as a plain ASGI app: no framework routing or body
parsing on the hot path. Everything outside ``/v2`` goes to the wrapped app."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from modelplane.domain import Principal
from modelplane.errors import InvalidInput, ModelplaneError, NotFound, Overloaded
from modelplane.protocol.v2 import EXTENSIONS, error_body
from modelplane.security.policy import Action, authorize
from modelplane.serving.access import visible_route, visible_routes
from modelplane.serving.asgi import (
    RequestIds,
    caller,
    clean_request_id,
    read_body,
    reply,
    too_large,
)
from modelplane.serving.gateway import Gateway
from modelplane.telemetry.metrics import Metrics

PLATFORM = "onnxruntime_onnx"
JSON = b"application/json"
BINARY = b"application/octet-stream"
INTERNAL = error_body("internal error; the server log has the details", "internal")
log = logging.getLogger("modelplane.gateway")


def _parse_header_length(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidInput(
            f"Inference-Header-Content-Length must be a non-negative integer, got {raw!r}"
        )
    return int(raw)


class V2Surface:
    def __init__(
        self, app: ASGIApp, gateway: Gateway, version: str, max_body: int, metrics: Metrics
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._ids = RequestIds()
        self._gateway = gateway
        self._max_body = max_body
        self._server_metadata = orjson.dumps(
            {"name": "modelplane", "version": version, "extensions": EXTENSIONS}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/v2" or path.startswith("/v2/")):
            await self._app(scope, receive, send)
            return
        try:
            await self._dispatch(scope, receive, send, path)
        except ModelplaneError as exc:
            extra = [(b"retry-after", b"1")] if isinstance(exc, Overloaded) else []
            await reply(send, exc.status, error_body(exc.message, exc.code), JSON, extra)
        except Exception:  # a bug: the one error shape, the details in the server log only
            log.exception("V2 request %s failed", path)
            await reply(send, 500, INTERNAL, JSON)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        parts = path.rstrip("/").split("/")[2:]  # after "", "v2"
        if method == "GET" and parts in ([], ["health", "live"], ["health", "ready"]):
            body = self._server_metadata if not parts else b""
            await reply(send, 200, body, JSON if body else b"text/plain")
            return
        who = caller(scope)
        authorize(who, Action.INFER)
        if parts == ["models", "stats"] and method == "GET":
            routes = visible_routes(self._gateway, who)
            stats = [await self._gateway.stats(route) for route in routes]
            await reply(send, 200, orjson.dumps({"model_stats": stats}), JSON)
            return
        if len(parts) < 2 or parts[0] != "models":
            raise NotFound(f"no V2 route {path!r}; see /docs and docs/api.md")
        name, rest = parts[1], parts[2:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if rest == ["infer"] and method == "POST":
            await self._infer(scope, receive, send, who, name, version)
        elif rest == [] and method == "GET":
            await reply(send, 200, orjson.dumps(self._metadata(who, name, version)), JSON)
        elif rest == ["stats"] and method == "GET":
            one = await self._gateway.stats(visible_route(self._gateway, who, name, version))
            await reply(send, 200, orjson.dumps({"model_stats": [one]}), JSON)
        elif rest == ["ready"] and method == "GET":
            route = visible_route(self._gateway, who, name, version)
            if not route.endpoints:
                raise InvalidInput(
                    f"model {name!r} is not ready: 0 of {route.desired} replicas ready"
                )
            await reply(send, 200, b"", b"text/plain")
        else:
            raise NotFound(f"no V2 route {method} {path!r}; see docs/api.md")

    def _metadata(self, who: Principal, name: str, version: str | None) -> dict[str, Any]:
        route = visible_route(self._gateway, who, name, version)
        return {
            "name": route.name,
            "versions": route.versions(),
            "platform": PLATFORM,
            "inputs": [t.to_dict() for t in route.signature.inputs],
            "outputs": [t.to_dict() for t in route.signature.outputs],
        }

    async def _infer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        who: Principal,
        name: str,
        version: str | None,
    ) -> None:
        try:
            route = visible_route(self._gateway, who, name, version)
        except NotFound:
            self._metrics.unrouted.labels("404").inc()
            raise
        header_length = None
        request_id = ""
        sticky = False  # the split between versions by the request id's hash
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                header_length = _parse_header_length(value)
            elif key == b"x-request-id":
                request_id = clean_request_id(value)
            elif key == b"modelplane-sticky":
                sticky = value.strip().lower() in (b"1", b"true", b"yes")
            elif key == b"content-length" and value.isdigit() and int(value) > self._max_body:
                raise too_large(int(value), self._max_body)
        request_id = request_id or self._ids.new()
        body = await read_body(receive, self._max_body)
        result = await self._gateway.infer(route, body, header_length, request_id, sticky)
        extra = [(b"x-request-id", request_id.encode())]
        if result.outlier:
            extra.append((b"modelplane-input-outlier", result.outlier.encode()))
        if result.header_length is None:
            await reply(send, result.status, result.body, JSON, extra)
        else:
            extra.append((b"inference-header-content-length", str(result.header_length).encode()))
            await reply(send, result.status, result.body, BINARY, extra)
