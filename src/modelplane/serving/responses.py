"""Turning errors and V2 payloads into HTTP responses (the one place that does it)."""

from __future__ import annotations

from starlette.responses import Response

from modelplane.errors import InvalidInput, ModelplaneError
from modelplane.protocol import v2

JSON = "application/json"


def error_response(exc: ModelplaneError, headers: dict[str, str] | None = None) -> Response:
    return Response(v2.error_body(exc.message), exc.status, headers=headers, media_type=JSON)


def infer_response(body: bytes, header_length: int | None) -> Response:
    if header_length is None:
        return Response(body, media_type=JSON)
    return Response(
        body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


def header_length(raw: str | None) -> int | None:
    """The Inference-Header-Content-Length header as an int, or None when absent."""
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidInput(
            f"Inference-Header-Content-Length must be a non-negative integer, got {raw!r}"
        )
    return value
