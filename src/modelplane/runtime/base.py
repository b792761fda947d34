"""The Runtime contract: ``load`` and ``predict``; everything else has a default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from modelplane.domain import Signature
from modelplane.telemetry.histogram import Histogram

Arrays = dict[str, np.ndarray]


class Runtime(Protocol):
    """A loaded model. ``signature`` is valid after ``load``. ``predict`` is a coroutine so that
    wrappers (batching, isolation) compose without blocking the event loop."""

    signature: Signature

    def load(self) -> None: ...

    async def predict(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> Arrays: ...


@runtime_checkable
class BatchStats(Protocol):
    """Optional: a runtime that merges requests reports how often each batch size ran and how
    long requests waited and batches computed."""

    batch_sizes: Mapping[int, int]
    queue_seconds: Histogram
    compute_seconds: Histogram

    @property
    def queue_depth(self) -> int: ...
