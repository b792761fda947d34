"""Attack detection: sliding windows over what one source address or key does wrong, and the
blocks they lead to.

Three detectors, each a ``Rule`` (how many events in how long trip it, and how long a trip
blocks; 0 = count and audit only):

- ``auth_failures``: requests refused with 401, per source address (an IPv6 address's /64);
  blocks the address for requests without a valid key, unless it is in ``never_block``.
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

import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
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
IPV6_GROUP_BITS = 64  # one host or site holds a whole /64 and can rotate addresses within it
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=4096)
def source_group(source: str) -> str:
    """What the address block counts and blocks: an IPv4 address itself, an IPv6 address's /64
    (an IPv4-mapped one as its IPv4 address), anything that is no address as it is."""
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return source
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_GROUP_BITS), strict=False))
    return source


def in_networks(source: str, networks: tuple[Network, ...]) -> bool:
    """Whether ``source`` is an address inside one of ``networks``."""
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == n.version and address in n for n in networks)


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
    """The three detectors' rules, how many addresses or keys each may track at once, and the
    networks whose addresses the auth-failure block never blocks."""

    auth_failures: Rule
    model_scan: Rule
    malformed: Rule
    max_tracked: int = 100_000
    never_block: tuple[Network, ...] = ()


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
        """The block on ``source`` (its IPv6 /64) now, if any. It binds only requests without
        a valid key: call ``refused`` for each request it turns away."""
        if not self.blocked_sources:
            return None
        return self._active(self.blocked_sources, source_group(source))

    def refused(self, block: Block) -> None:
        self._counts.attack_refused(block.detector)

    def key_block(self, key_id: str) -> Block | None:
        if not self.blocked_keys:
            return None
        block = self._active(self.blocked_keys, key_id)
        if block is not None:
            self.refused(block)
        return block

    def _active(self, blocks: dict[str, Block], who: str) -> Block | None:
        block = blocks.get(who)
        if block is None:
            return None
        if block.until <= self._clock():
            del blocks[who]
            return None
        return block

    # ---- events -------------------------------------------------------------------------------
    def auth_failed(self, source: str, target: str) -> None:
        rule = self.rules.auth_failures
        group = source_group(source)
        times = self._track(self._failures, group, deque)
        if count_in_window(times, self._clock(), rule) >= rule.threshold:
            times.clear()
            why = f"{rule.threshold} failed authentications within {rule.window_s:g}s"
            if self.rules.never_block and in_networks(source, self.rules.never_block):
                rule = Rule(rule.threshold, rule.window_s)  # counted and audited, not blocked
            self._trip(AUTH_FAILURES, rule, self.blocked_sources, group, "", "", source,
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
        never_block=tuple(ipaddress.ip_network(n, strict=False) for n in settings.never_block),
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
    """``authenticate()`` behind the detectors (gRPC): a failed authentication from a blocked
    address is refused (429, ``RESOURCE_EXHAUSTED``), else counted against the address; a valid
    key is served whatever its address, unless the key itself is blocked."""
    try:
        who = authenticate()
    except Unauthenticated:
        block = detector.source_block(source)
        if block is not None:
            detector.refused(block)
            raise Blocked(block, f"source address {source_group(source)}", detector.now()) from None
        detector.auth_failed(source, "grpc")
        raise
    block = detector.key_block(who.key_id)
    if block is not None:
        raise Blocked(block, f"key {who.key_id}", detector.now())
    return who
