"""Refusals on /v1 reach OpenAI clients in OpenAI's error shape, whatever sent them and however
their body was split; other paths and successful answers pass untouched."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import orjson

from modelplane.serving.openai_errors import OpenAIErrors


def refusing(parts: list[bytes], status: int = 401) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part,
                        "more_body": i < len(parts) - 1})  # fmt: skip

    return app


async def call(app: Any, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    await OpenAIErrors(app)({"type": "http", "path": path}, receive, send)
    return sent


async def test_a_refusal_split_over_messages_becomes_one_openai_error() -> None:
    body = orjson.dumps({"error": "invalid or revoked API key", "code": "unauthenticated"})
    sent = await call(refusing([body[:10], body[10:]]), "/v1/models")
    start, whole = sent
    assert start["status"] == 401
    assert dict(start["headers"])[b"content-length"] == str(len(whole["body"])).encode()
    assert orjson.loads(whole["body"]) == {"error": {
        "message": "invalid or revoked API key", "type": "invalid_request_error",
        "param": None, "code": "invalid_api_key"}}  # fmt: skip


async def test_other_paths_keep_their_error_shape() -> None:
    body = orjson.dumps({"error": "nope", "code": "unauthenticated"})
    sent = await call(refusing([body]), "/v2/models")
    assert sent[1]["body"] == body
