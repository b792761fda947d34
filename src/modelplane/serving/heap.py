"""Memory housekeeping of the long-lived processes (the server and its replicas).

``release_freed_memory``: glibc's malloc keeps freed memory for reuse: it raises its mmap
threshold each time a large block is freed (up to 32 MB), so once a model's bytes, an upload's
chunks or a parsed ONNX graph have been freed, the next blocks that size come from the heap,
which keeps them when they are freed in turn. An idle server held about 20 MB it no longer used
after two pushes, and a replica about 10 MB after loading its model. ``malloc_trim`` hands the
free pages back: a replica calls it once its model is loaded, the server every few seconds
(0.04 ms when it has something to hand back, nothing measurable when not), with all its threads
on one arena (``one_malloc_arena``). Fixing the threshold instead was measured too: the gateway
spent a fifth to a third more CPU on 8 MB request bodies, mapped and unmapped each time.
Elsewhere than glibc (musl, macOS) nothing changes.

``freeze_startup_objects``: the collector's full passes walk every object alive, and a started
server holds about 150,000 (modules, the app, the ORM); each pass stopped the event loop for
tens of milliseconds, which was most of the p99 latency under load. Objects alive once startup
is done stay alive, so they are moved out of the collector's reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc

RELEASE_PERIOD_S = 2.0
M_ARENA_MAX = -8  # glibc's mallopt parameter


def one_malloc_arena() -> None:
    """Every thread of this process allocates from malloc's main arena, the one whose free top
    ``malloc_trim`` gives back (it leaves other arenas' tops alone, and a push's parsing runs
    in a worker thread). Call once, at start, before threads are made."""
    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc: it decides
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)


def release_freed_memory() -> None:
    """Return the free pages malloc holds to the system."""
    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc: it decides
        ctypes.CDLL(None).malloc_trim(0)


async def release_freed_memory_forever(period_s: float = RELEASE_PERIOD_S) -> None:
    """``release_freed_memory`` every ``period_s`` until cancelled."""
    while True:
        await asyncio.sleep(period_s)
        release_freed_memory()


def freeze_startup_objects() -> None:
    """Collect what startup left behind, then exempt every object alive now from future
    collections (call once, when startup is done)."""
    gc.collect()
    gc.freeze()
