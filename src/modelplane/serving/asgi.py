"""What the two public HTTP surfaces of the gateway (V2 in ``http.py``, OpenAI in
``openai.py``) share, as plain ASGI: the caller the auth middleware found, request ids, reading a
body within the limit, and a reply in one start and one body message."""

from __future__ import annotations

import itertools
import uuid

from starlette.types import Receive, Scope, Send

from modelplane.domain import Principal
from modelplane.errors import InvalidInput, PayloadTooLarge, Unauthenticated


def too_large(size: int, limit: int) -> PayloadTooLarge:
    """The one message for a body over the limit."""
    return PayloadTooLarge(
        f"request body of {size} bytes is over the limit of {limit} bytes; send smaller batches "
        "or raise MODELPLANE_SERVING__MAX_REQUEST_BYTES"
    )


def clean_request_id(raw: bytes) -> str:
    """A client's X-Request-Id, if it is a sane token (printable ASCII, at most 64 chars)."""
    text = raw.decode("ascii", "replace")[:64]
    return text if text.isprintable() and " " not in text else ""


class RequestIds:
    """Ids for requests that came without one: a random prefix per process and a counter
    (cheaper than uuid4 each time)."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:8]
        self._count = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._count):x}"


def caller(scope: Scope) -> Principal:
    """The principal the auth middleware in front of the surfaces put in the scope."""
    found = scope.get("state", {}).get("principal")
    if not isinstance(found, Principal):
        raise Unauthenticated("missing API key")
    return found


async def read_body(receive: Receive, max_body: int) -> bytes:
    """The request's body, refused (413) as soon as it passes ``max_body`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_body:
                raise too_large(size, max_body)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def reply(
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
