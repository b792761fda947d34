"""Dynamic batching as a wrapper that is itself a Runtime (composed, never patched on).

Requests wait in a queue; a single loop takes as many as fit in ``max_batch_size`` (and, when
``max_queue_delay_s`` is set, waits that long for a preferred size), concatenates them along the
batch dimension, runs the inner runtime once, and splits the outputs back. With no delay set the
batcher never waits: while one batch runs, the next one forms, so batches grow with load and an
idle server adds no latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from modelplane.domain import Signature
from modelplane.errors import InvalidInput, Overloaded
from modelplane.runtime.base import Arrays, Runtime
from modelplane.telemetry.histogram import Histogram


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    max_batch_size: int = 32
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue: int = 1024


@dataclass(slots=True)
class _Item:
    inputs: Mapping[str, np.ndarray]
    outputs: tuple[str, ...]
    size: int
    key: tuple[object, ...]
    future: asyncio.Future[Arrays]
    enqueued: float = field(default_factory=time.perf_counter)


def batchable(signature: Signature) -> bool:
    """True when every input and output has a leading dynamic (batch) dimension."""
    tensors = (*signature.inputs, *signature.outputs)
    return bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)


class BatchingRuntime:
    def __init__(self, inner: Runtime, config: BatchingConfig) -> None:
        self._inner = inner
        self._config = config
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._enabled = False
        self.batch_sizes: Counter[int] = Counter()
        self.queue_seconds = Histogram()
        self.compute_seconds = Histogram()
        self.signature = inner.signature

    def load(self) -> None:
        self._inner.load()
        self.signature = self._inner.signature
        self._enabled = self._config.max_batch_size > 1 and batchable(self.signature)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def enabled(self) -> bool:
        return self._enabled

    async def predict(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> Arrays:
        if not self._enabled:
            return await self._unbatched(inputs, outputs)
        if len(self._queue) >= self._config.max_queue:
            raise Overloaded(f"the replica queue is full ({self._config.max_queue} requests)")
        size = _rows(inputs)
        if size > self._config.max_batch_size:
            return await self._unbatched(inputs, outputs)
        key = tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(inputs, tuple(outputs), size, key, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="batcher")
        self._wake.set()
        return await future

    async def _unbatched(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> Arrays:
        self.batch_sizes[_rows(inputs)] += 1
        self.queue_seconds.observe(0.0)
        started = time.perf_counter()
        try:
            return await self._inner.predict(inputs, outputs)
        finally:
            self.compute_seconds.observe(time.perf_counter() - started)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = await self._take()
            if batch:
                await self._execute(batch)

    async def _take(self) -> list[_Item]:
        config = self._config
        if config.max_queue_delay_s > 0:
            target = max(config.preferred_batch_sizes or (config.max_batch_size,))
            deadline = self._queue[0].enqueued + config.max_queue_delay_s
            while _queued_rows(self._queue) < target:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
        first = self._queue.popleft()
        batch = [first]
        rows = first.size
        keep: deque[_Item] = deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():
                continue  # cancelled by a timeout while it waited
            if item.key == first.key and rows + item.size <= config.max_batch_size:
                batch.append(item)
                rows += item.size
            else:
                keep.append(item)
        self._queue.extendleft(reversed(keep))
        return [i for i in batch if not i.future.done()]

    async def _execute(self, batch: list[_Item]) -> None:
        self.batch_sizes[sum(i.size for i in batch)] += 1
        started = time.perf_counter()
        for item in batch:
            self.queue_seconds.observe(started - item.enqueued)
        names = list(dict.fromkeys(n for i in batch for n in i.outputs))
        try:
            if len(batch) == 1:
                merged = batch[0].inputs
            else:
                merged = {
                    name: np.concatenate([i.inputs[name] for i in batch])
                    for name in batch[0].inputs
                }
            results = await self._inner.predict(merged, names)
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self.compute_seconds.observe(time.perf_counter() - started)
        offset = 0
        for item in batch:
            end = offset + item.size
            if not item.future.done():
                item.future.set_result({n: results[n][offset:end] for n in item.outputs})
            offset = end

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    first = next(iter(inputs.values()))
    if first.ndim == 0:
        raise InvalidInput("inputs must have a batch dimension")
    return int(first.shape[0])


def _queued_rows(queue: deque[_Item]) -> int:
    return sum(i.size for i in queue)
