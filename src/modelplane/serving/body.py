"""The one message for a body over the limit."""

from __future__ import annotations

from modelplane.errors import PayloadTooLarge


def too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body of {size} bytes is over the limit of {limit} bytes; send smaller batches "
        "or raise MODELPLANE_SERVING__MAX_REQUEST_BYTES"
    )
