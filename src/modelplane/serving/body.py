"""Reading a request body with a size limit, so a huge body never sits in memory."""

from __future__ import annotations

from starlette.requests import Request

from modelplane.errors import InvalidInput, PayloadTooLarge


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput("Content-Length must be an integer")
        if int(declared) > limit:
            raise too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body of {size} bytes is over the limit of {limit} bytes; send smaller batches "
        "or raise MODELPLANE_SERVING__MAX_REQUEST_BYTES"
    )
