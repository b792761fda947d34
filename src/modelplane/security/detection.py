"""Attack detection: sliding windows over what one source address or key does wrong, and the
blocks they lead to.

Three detectors, each a ``Rule`` (how many events in how long trip it, and how long a trip
blocks; 0 = count and audit only):

- ``auth_failures``: requests refused with 401, per source address; blocks the address.
- ``model_scan``: distinct unknown model names asked for (404), per key (or address); blocks
  the key.
- ``malformed``: requests refused by input validation (400, 413, 422), per key (or address);
  blocks the key.

The windows are plain functions of an injected clock (``now`` is passed in), so their math is
tested with a fake clock. ``AttackDetector`` is the one small stateful holder the HTTP
middleware and the gRPC servicer share: it keeps the windows and the blocks, counts trips and
refusals in ``/metrics`` and writes each trip to the audit trail.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from modelplane.domain import Principal
from modelplane.errors import Overloaded, Unauthenticated
from modelplane.settings import DetectionSettings

log = logging.getLogger("modelplane.security")

AUTH_FAILURES = "auth_failures"
MODEL_SCAN = "model_scan"
MALFORMED = "malformed"
DETECTORS = (AUTH_FAILURES, MODEL_SCAN, MALFORMED)
T = TypeVar("T")
MALFORMED_STATUSES = frozenset({400, 413, 422})


@dataclass(frozen=True, slots=True)
class Rule:
    """``threshold`` events within ``window_s`` trip the detector; a trip blocks for
    ``block_s`` seconds (0: the trip is counted and audited, nothing is blocked)."""

    threshold: int
    window_s: float
    block_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Block:
    detector: str
    until: float  # clock time
    reason: str

    def message(self, who: str) -> str:
        when = datetime.fromtimestamp(self.until, UTC).isoformat(timespec="seconds")
        return (
            f"{who} is blocked until {when.replace('+00:00', 'Z')} ({self.reason}); "
            "retry after that"
        )

    def retry_after(self, now: float) -> int:
        return max(1, int(self.until - now + 0.999))


def count_in_window(times: deque[float], now: float, rule: Rule) -> int:
    """Add an event at ``now`` to ``times`` (oldest first) and return how many fall within the
    window. Only the newest ``threshold`` events are kept: that is all a trip needs."""
    times.append(now)
    while times and (now - times[0] >= rule.window_s or len(times) > rule.threshold):
        times.popleft()
    return len(times)


def distinct_in_window(seen: dict[str, float], name: str, now: float, rule: Rule) -> int:
    """Record ``name`` at ``now`` in ``seen`` (name -> last time asked) and return how many
    distinct names were asked within the window (at most ``threshold`` are kept)."""
    seen.pop(name, None)
    seen[name] = now  # insertion order: oldest first
    for old in [n for n, t in seen.items() if now - t >= rule.window_s]:
        del seen[old]
    while len(seen) > rule.threshold:
        del seen[next(iter(seen))]
    return len(seen)


class AuditSink(Protocol):
    def record(
        self,
        action: str,
        *,
        key_id: str,
        key_name: str,
        source: str,
        target: str,
        result: str,
        detail: str = "",
    ) -> None: ...


class Counts(Protocol):
    """Where trips and refusals are counted (``Metrics``)."""

    def attack_detected(self, detector: str) -> None: ...

    def attack_refused(self, detector: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Rules:
    """The three detectors' rules, and how many addresses or keys each may track at once."""

    auth_failures: Rule
    model_scan: Rule
    malformed: Rule
    max_tracked: int = 100_000


class AttackDetector:
    """The windows and blocks of the three detectors (one event loop: no lock)."""

    def __init__(
        self,
        rules: Rules,
        counts: Counts,
        audit: AuditSink | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.rules = rules
        self.audit = audit
        self._counts = counts
        self._clock = clock or time.time
        self._failures: dict[str, deque[float]] = {}
        self._scans: dict[str, dict[str, float]] = {}
        self._malformed: dict[str, deque[float]] = {}
        self.blocked_sources: dict[str, Block] = {}
        self.blocked_keys: dict[str, Block] = {}

    def now(self) -> float:
        return self._clock()

    # ---- refusals (checked before a request is served) ----------------------------------------
    def source_block(self, source: str) -> Block | None:
        """The block on ``source`` now, if any (and counts the refused request)."""
        if not self.blocked_sources:
            return None
        return self._active(self.blocked_sources, source)

    def key_block(self, key_id: str) -> Block | None:
        if not self.blocked_keys:
            return None
        return self._active(self.blocked_keys, key_id)

    def _active(self, blocks: dict[str, Block], who: str) -> Block | None:
        block = blocks.get(who)
        if block is None:
            return None
        if block.until <= self._clock():
            del blocks[who]
            return None
        self._counts.attack_refused(block.detector)
        return block

    # ---- events -------------------------------------------------------------------------------
    def auth_failed(self, source: str, target: str) -> None:
        rule = self.rules.auth_failures
        times = self._track(self._failures, source, deque)
        if count_in_window(times, self._clock(), rule) >= rule.threshold:
            times.clear()
            why = f"{rule.threshold} failed authentications within {rule.window_s:g}s"
            self._trip(AUTH_FAILURES, rule, self.blocked_sources, source, "", "", source,
                       target, why)  # fmt: skip

    def unknown_model(self, key_id: str, key_name: str, source: str, name: str) -> None:
        rule = self.rules.model_scan
        who = key_id or source
        seen = self._track(self._scans, who, dict)
        if distinct_in_window(seen, name[:128], self._clock(), rule) >= rule.threshold:
            names = ", ".join(list(seen)[-5:])
            seen.clear()
            why = f"{rule.threshold} unknown model names within {rule.window_s:g}s"
            self._trip(MODEL_SCAN, rule, self.blocked_keys, who, key_id, key_name, source,
                       name, f"{why} (last: {names})")  # fmt: skip

    def bad_request(
        self, key_id: str, key_name: str, source: str, target: str, status: int
    ) -> None:
        rule = self.rules.malformed
        who = key_id or source
        times = self._track(self._malformed, who, deque)
        if count_in_window(times, self._clock(), rule) >= rule.threshold:
            times.clear()
            why = f"{rule.threshold} malformed or oversized requests within {rule.window_s:g}s"
            self._trip(MALFORMED, rule, self.blocked_keys, who, key_id, key_name, source,
                       target, f"{why} (last: {status})")  # fmt: skip

    def _track(self, table: dict[str, T], who: str, new: Callable[[], T]) -> T:
        found = table.get(who)
        if found is None:
            if len(table) >= self.rules.max_tracked:  # bounded: the oldest tracked goes
                del table[next(iter(table))]
            found = table[who] = new()
        return found

    def _trip(
        self,
        detector: str,
        rule: Rule,
        blocks: dict[str, Block],
        who: str,
        key_id: str,
        key_name: str,
        source: str,
        target: str,
        why: str,
    ) -> None:
        self._counts.attack_detected(detector)
        blocking = rule.block_s > 0
        if blocking:
            if len(blocks) >= self.rules.max_tracked:
                del blocks[next(iter(blocks))]
            blocks[who] = Block(detector, self._clock() + rule.block_s, why)
        result = "blocked" if blocking else "detected"
        detail = f"{why}; blocked for {rule.block_s:g}s" if blocking else why
        log.warning("attack detection %s: %s %s (key %s, source %s): %s", detector, result,
                    who, key_id or "-", source, detail)  # fmt: skip
        if self.audit is not None:
            try:
                self.audit.record(f"detect.{detector}", key_id=key_id, key_name=key_name,
                                  source=source, target=target, result=result,
                                  detail=detail)  # fmt: skip
            except Exception:  # the audit trail failing must not turn a refusal into a 500
                log.exception("could not write the %s detection to the audit trail", detector)


def rules_from(settings: DetectionSettings) -> Rules:
    return Rules(
        auth_failures=Rule(settings.auth_failures, settings.auth_window_s, settings.auth_block_s),
        model_scan=Rule(settings.scan_names, settings.scan_window_s, settings.scan_block_s),
        malformed=Rule(settings.malformed, settings.malformed_window_s, settings.malformed_block_s),
        max_tracked=settings.max_tracked,
    )


class Blocked(Overloaded):
    """A request refused because its address or key is blocked; ``retry_after_s`` goes to the
    client (HTTP ``Retry-After``, gRPC ``retry-after`` trailing metadata)."""

    def __init__(self, block: Block, who: str, now: float) -> None:
        super().__init__(block.message(who))
        self.retry_after_s = block.retry_after(now)


def detected_principal(
    detector: AttackDetector, source: str, authenticate: Callable[[], Principal]
) -> Principal:
    """``authenticate()`` behind the detectors (gRPC): a blocked address or key is refused
    (429, ``RESOURCE_EXHAUSTED``) and a failed authentication is counted against the address."""
    block = detector.source_block(source)
    if block is not None:
        raise Blocked(block, f"source address {source}", detector.now())
    try:
        who = authenticate()
    except Unauthenticated:
        detector.auth_failed(source, "grpc")
        raise
    block = detector.key_block(who.key_id)
    if block is not None:
        raise Blocked(block, f"key {who.key_id}", detector.now())
    return who
