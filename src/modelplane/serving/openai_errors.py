"""Refusals on ``/v1`` in OpenAI's error object: whatever refused the request before the OpenAI
surface saw it (the key check, a quota, a block), OpenAI clients get the error shape they parse
and raise their usual exceptions with the message."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelplane.protocol import openai as oa


class OpenAIErrors:
    """Gives every refusal on ``/v1`` (a missing or wrong key, a quota, a block) OpenAI's error
    object, so OpenAI clients raise their usual exceptions with the message."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self._app(scope, receive, send)
            return
        held: Message | None = None
        parts: list[bytes] = []

        async def reshape(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held = message
                return
            if held is not None and message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if message.get("more_body", False):
                    return  # the whole error body first, then it is rewritten
                start, body = held, _openai_error(held["status"], b"".join(parts))
                held = None
                headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self._app(scope, receive, reshape)


def _openai_error(status: int, body: bytes) -> bytes:
    """Our ``{"error": message, "code"}`` as OpenAI's; a body already in OpenAI's shape as is."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return oa.error_body(status, body.decode("utf-8", "replace") or "request refused")
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return body
    message = doc.get("error") if isinstance(doc, dict) else None
    return oa.error_body(status, str(message or "request refused"))
