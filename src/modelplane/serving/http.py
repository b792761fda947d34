"""The public V2 REST surface of the gateway as a plain ASGI app: no framework routing or body
parsing on the hot path. Everything outside ``/v2`` goes to the wrapped app."""

from __future__ import annotations

import itertools
import logging
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from modelplane.domain import Principal
from modelplane.errors import InvalidInput, ModelplaneError, NotFound, Overloaded, Unauthenticated
from modelplane.protocol.v2 import EXTENSIONS, error_body
from modelplane.security.policy import Action, authorize
from modelplane.serving.access import visible_route, visible_routes
from modelplane.serving.body import too_large
from modelplane.serving.gateway import Gateway
from modelplane.telemetry.metrics import Metrics

PLATFORM = "onnxruntime_onnx"
JSON = b"application/json"
BINARY = b"application/octet-stream"
INTERNAL = error_body("internal error; the server log has the details", "internal")
log = logging.getLogger("modelplane.gateway")


def _clean_id(raw: bytes) -> str:
    """A client's X-Request-Id, if it is a sane token (printable ASCII, at most 64 chars)."""
    text = raw.decode("ascii", "replace")[:64]
    return text if text.isprintable() and " " not in text else ""


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
        # request ids: a random prefix per process and a counter (cheaper than uuid4 each time)
        self._id_prefix = uuid.uuid4().hex[:8]
        self._ids = itertools.count(1)
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
            await _reply(send, exc.status, error_body(exc.message, exc.code), JSON, extra)
        except Exception:  # a bug: the one error shape, the details in the server log only
            log.exception("V2 request %s failed", path)
            await _reply(send, 500, INTERNAL, JSON)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        parts = path.rstrip("/").split("/")[2:]  # after "", "v2"
        if method == "GET" and parts in ([], ["health", "live"], ["health", "ready"]):
            body = self._server_metadata if not parts else b""
            await _reply(send, 200, body, JSON if body else b"text/plain")
            return
        who = _caller(scope)
        authorize(who, Action.INFER)
        if parts == ["models", "stats"] and method == "GET":
            routes = visible_routes(self._gateway, who)
            stats = [await self._gateway.stats(route) for route in routes]
            await _reply(send, 200, orjson.dumps({"model_stats": stats}), JSON)
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
            await _reply(send, 200, orjson.dumps(self._metadata(who, name, version)), JSON)
        elif rest == ["stats"] and method == "GET":
            one = await self._gateway.stats(visible_route(self._gateway, who, name, version))
            await _reply(send, 200, orjson.dumps({"model_stats": [one]}), JSON)
        elif rest == ["ready"] and method == "GET":
            route = visible_route(self._gateway, who, name, version)
            if not route.endpoints:
                raise InvalidInput(
                    f"model {name!r} is not ready: 0 of {route.desired} replicas ready"
                )
            await _reply(send, 200, b"", b"text/plain")
        else:
            raise NotFound(f"no V2 route {method} {path!r}; see docs/api.md")

    def _metadata(self, who: Principal, name: str, version: str | None) -> dict[str, Any]:
        route = visible_route(self._gateway, who, name, version)
        return {
            "name": route.name,
            "versions": [route.version],
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
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                header_length = _parse_header_length(value)
            elif key == b"x-request-id":
                request_id = _clean_id(value)
            elif key == b"content-length" and value.isdigit() and int(value) > self._max_body:
                raise too_large(int(value), self._max_body)
        request_id = request_id or f"{self._id_prefix}{next(self._ids):x}"
        body = await self._read_body(receive)
        result = await self._gateway.infer(route, body, header_length, request_id)
        extra = [(b"x-request-id", request_id.encode())]
        if result.outlier:
            extra.append((b"modelplane-input-outlier", result.outlier.encode()))
        if result.header_length is None:
            await _reply(send, result.status, result.body, JSON, extra)
        else:
            extra.append((b"inference-header-content-length", str(result.header_length).encode()))
            await _reply(send, result.status, result.body, BINARY, extra)

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidInput("the client went away before sending the whole body")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self._max_body:
                    raise too_large(size, self._max_body)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _caller(scope: Scope) -> Principal:
    """The principal the auth middleware in front of this app put in the scope."""
    found = scope.get("state", {}).get("principal")
    if not isinstance(found, Principal):
        raise Unauthenticated("missing API key")
    return found


async def _reply(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
