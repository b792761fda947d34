"""Memory housekeeping of the long-lived processes (the server and its replicas).

``return_large_blocks``: glibc's malloc raises its mmap threshold each time a large block is
freed, up to 32 MB, so that once a model's bytes, an upload's chunks or a parsed ONNX graph have
been freed, the next such blocks come from the heap, which keeps them when they are freed in
turn: an idle server held about 20 MB it no longer used after two pushes, and a replica about
10 MB after loading its model. A fixed threshold (glibc's default starting value, 128 KiB) keeps
large blocks in mmap, returned when freed. Elsewhere (musl, macOS) nothing changes.

``freeze_startup_objects``: the collector's full passes walk every object alive, and a started
server holds about 150,000 (modules, the app, the ORM); each pass stopped the event loop for
tens of milliseconds, which was most of the p99 latency under load. Objects alive once startup
is done stay alive, so they are moved out of the collector's reach.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
THRESHOLD_BYTES = 128 * 1024


def return_large_blocks() -> None:
    """Fix malloc's mmap threshold for this process (call once, at start)."""
    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc: it decides
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)


def freeze_startup_objects() -> None:
    """Collect what startup left behind, then exempt every object alive now from future
    collections (call once, when startup is done)."""
    gc.collect()
    gc.freeze()
