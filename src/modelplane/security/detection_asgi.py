"""The attack detectors on the HTTP surface: two thin ASGI wrappers around ``AttackDetector``.

``DetectionMiddleware`` sits outside authentication: from a blocked source address it serves a
request with a valid key and turns the key check's refusal (401) into the block's (429 saying
until when), so a shared address (NAT, a proxy) never locks out the valid keys behind it; and,
once a request is answered, it tells the detector about a 401, a 404 for a model name, or an
input-validation refusal (400, 413, 422) on the inference surface.
``KeyBlockGate`` sits inside authentication and refuses a blocked key. Neither does more than a
dict lookup while nothing is blocked.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelplane.domain import Principal
from modelplane.security.detection import (
    MALFORMED_STATUSES,
    AttackDetector,
    Block,
    source_group,
)

HEALTH = frozenset({"/v2/health/live", "/v2/health/ready"})
NAMED_PREFIXES = ("/v2/models/", "/api/v1/models/", "/api/v1/deployments/")


def source_of(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


async def refuse(send: Send, block: Block, who: str, now: float) -> None:
    body = orjson.dumps({"error": block.message(who), "code": "blocked"})
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(block.retry_after(now)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _model_name(path: str) -> str | None:
    """The model (or deployment) name a path names, if any."""
    for prefix in NAMED_PREFIXES:
        if path.startswith(prefix):
            name = path[len(prefix) :].partition("/")[0]
            return name or None
    return None


class DetectionMiddleware:
    def __init__(self, app: ASGIApp, detector: AttackDetector) -> None:
        self._app = app
        self._detector = detector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in HEALTH:
            await self._app(scope, receive, send)
            return
        detector = self._detector
        source = source_of(scope)
        block = detector.source_block(source)
        if block is not None:
            await self._blocked(scope, receive, send, block, source)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self._app(scope, receive, watch)
        if status >= 400:
            self._observe(scope, source, status)

    async def _blocked(
        self, scope: Scope, receive: Receive, send: Send, block: Block, source: str
    ) -> None:
        """Serve a request from a blocked address; what the key check refuses gets the 429."""
        detector = self._detector
        swapped = False

        async def swap(message: Message) -> None:
            nonlocal swapped
            if message["type"] == "http.response.start" and message["status"] == 401:
                swapped = True
                detector.refused(block)
                who = f"source address {source_group(source)}"
                await refuse(send, block, who, detector.now())
            elif not swapped:  # the 401's body is dropped with it
                await send(message)

        await self._app(scope, receive, swap)

    def _observe(self, scope: Scope, source: str, status: int) -> None:
        path: str = scope["path"]
        if status == 401:
            self._detector.auth_failed(source, path)
            return
        principal = scope.get("state", {}).get("principal")
        key_id, key_name = (
            (principal.key_id, principal.name) if isinstance(principal, Principal) else ("", "")
        )
        if status == 404:
            name = _model_name(path)
            if name is not None:
                self._detector.unknown_model(key_id, key_name, source, name)
        elif status in MALFORMED_STATUSES and path.startswith("/v2/"):
            self._detector.bad_request(key_id, key_name, source, path, status)


class KeyBlockGate:
    """Refuses a key that a detector blocked (inside authentication: it reads the principal)."""

    def __init__(self, app: ASGIApp, detector: AttackDetector) -> None:
        self._app = app
        self._detector = detector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._detector.blocked_keys and scope["type"] == "http":
            principal = scope.get("state", {}).get("principal")
            if isinstance(principal, Principal):
                block = self._detector.key_block(principal.key_id)
                if block is not None:
                    who = f"key {principal.key_id}"
                    await refuse(send, block, who, self._detector.now())
                    return
        await self._app(scope, receive, send)
