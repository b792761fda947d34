"""The audit trail: who did what, from where, to what, with what result.

``AuditTrail.record`` is cheap and never blocks: it puts an entry in a bounded in-memory queue
that a background thread writes to an ``AuditSink`` (the registry's append-only table) in
batches. Denied requests can come in floods, so once the queue holds ``capacity`` entries a
denial (or a detector's trip) is dropped; a management action (``MUTATIONS``) may still be
queued up to twice that, the hard cap, past which it is dropped too. Every drop is counted by
kind (``dropped``, exported in ``/metrics``). A batch whose write fails is tried again a few
times before it is dropped (and counted). ``stop`` writes whatever is queued, so a clean
shutdown loses nothing.

Entries never carry secrets: callers pass key ids and names, never keys, headers or bodies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("modelplane.audit")

CAPACITY = 10_000
BATCH = 500
FLUSH_SECONDS = 0.5
WRITE_ATTEMPTS = 3  # a batch whose write fails is tried this many times before it is dropped
RETRY_SECONDS = 0.2  # the wait before the second attempt (doubled before each next one)

DENIED = "denied"  # a request refused by authentication, authorization or a quota
# a flag in an ASGI scope's state: the request's refusal is already in the trail
RECORDED = "audit_recorded"
# the kinds of entry, for the drop counts: denials (and detector trips) are dropped first
DENIAL, MANAGEMENT = "denial", "management"
# management actions: kept past the queue's capacity, up to its hard cap (twice the capacity)
MUTATIONS = frozenset(
    {
        "push", "alias", "unalias", "delete", "optimize", "samples", "deploy", "undeploy",
        "promote", "rollback", "deployment.rollout", "deployment.promote", "deployment.rollback",
        "node.cordon", "node.drain", "node.uncordon",
        "key.create", "key.update", "key.rotate", "key.revoke",
        "master_key.rotate", "sign_in", "sign_out",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    action: str
    key_id: str | None
    key_name: str | None
    source: str
    target: str
    result: str
    detail: str = ""


class AuditSink(Protocol):
    """Where entries end up (the registry's ``AuditLog``): appends, nothing else."""

    def append(self, entries: Sequence[AuditEntry]) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


def kind(action: str) -> str:
    return MANAGEMENT if action in MUTATIONS else DENIAL


class AuditTrail:
    def __init__(
        self,
        sink: AuditSink,
        *,
        capacity: int = CAPACITY,
        batch: int = BATCH,
        flush_s: float = FLUSH_SECONDS,
        clock: Callable[[], datetime] = _now,
        retry_s: float = RETRY_SECONDS,
    ) -> None:
        self._sink = sink
        self._capacity = capacity
        self._batch = batch
        self._flush_s = flush_s
        self._clock = clock
        self._retry_s = retry_s
        self._queue: deque[AuditEntry] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # entries dropped (queue full, or a batch that could not be written), by kind
        self.dropped_by_kind = {DENIAL: 0, MANAGEMENT: 0}
        self.written = 0

    def record(
        self,
        action: str,
        *,
        key_id: str | None,
        key_name: str | None,
        source: str,
        target: str,
        result: str,
        detail: str = "",
    ) -> None:
        """Queue one entry (non-blocking; safe from any thread or the event loop)."""
        entry = AuditEntry(
            self._clock(), action, key_id, key_name, source[:200], target[:500], result[:100],
            detail[:500],
        )  # fmt: skip
        what = kind(action)
        limit = self._capacity * 2 if what == MANAGEMENT else self._capacity
        with self._lock:
            if len(self._queue) >= limit:
                self.dropped_by_kind[what] += 1
                return
            self._queue.append(entry)
            full = len(self._queue) >= self._batch
        if full:
            self._wake.set()

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_kind.values())

    @property
    def pending(self) -> int:
        return len(self._queue)

    def flush(self) -> int:
        """Write everything queued now, in batches; returns how many entries were written."""
        total = 0
        while True:
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            if not batch:
                return total
            if not self._write(batch):
                continue
            total += len(batch)
            self.written += len(batch)

    def _write(self, batch: list[AuditEntry]) -> bool:
        """Append one batch, trying again after a failure; False (and counted) if it is lost."""
        wait_s = self._retry_s
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                self._sink.append(batch)
                return True
            except Exception:
                if attempt == WRITE_ATTEMPTS:
                    log.exception(
                        "could not write %d audit entries (%d attempts); they are lost",
                        len(batch),
                        attempt,
                    )
                    break
                log.warning("could not write %d audit entries; trying again", len(batch))
                time.sleep(wait_s)
                wait_s *= 2
        with self._lock:
            for entry in batch:
                self.dropped_by_kind[kind(entry.action)] += 1
        return False

    def start(self) -> None:
        """Start the background writer (once)."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the writer and write what is still queued."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            self._wake.set()
            thread.join()
        self.flush()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._flush_s)
            self._wake.clear()
            self.flush()


class AuditCollector(Collector):
    """The trail's own figures in ``/metrics``: entries written, dropped and waiting."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail

    def collect(self) -> Iterator[Any]:
        written = CounterMetricFamily(
            "modelplane_audit_entries_written", "Audit entries written to the registry database"
        )
        written.add_metric([], self._trail.written)
        dropped = CounterMetricFamily(
            "modelplane_audit_entries_dropped",
            "Audit entries dropped (the queue was full, or their write failed after retries), "
            "by kind: denial or management",
            labels=["kind"],
        )
        for what, count in sorted(self._trail.dropped_by_kind.items()):
            dropped.add_metric([what], count)
        pending = GaugeMetricFamily("modelplane_audit_queue_depth", "Audit entries not written yet")
        pending.add_metric([], self._trail.pending)
        yield from (written, dropped, pending)
