"""Give freed large blocks back to the system, in the long-lived processes (server, replicas).

glibc's malloc raises its mmap threshold each time a large block is freed, up to 32 MB, so that
after a model's bytes, an upload's chunks or a parsed ONNX graph are freed once, the next such
blocks come from the heap, and the heap keeps them when they are freed: an idle server held
about 20 MB it no longer used after two pushes, and a replica about 10 MB after loading its
model. A fixed threshold (glibc's default starting value, 128 KiB) keeps large blocks in mmap,
returned when freed. Elsewhere (musl, macOS) nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
THRESHOLD_BYTES = 128 * 1024


def return_large_blocks() -> None:
    """Fix malloc's mmap threshold for this process (call once, at start)."""
    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc: it decides
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)
