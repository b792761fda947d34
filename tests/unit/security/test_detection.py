"""The attack detectors' window math and blocks, with a fake clock."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from modelplane.domain import Principal, Role
from modelplane.errors import Overloaded, Unauthenticated
from modelplane.security.detection import (
    AttackDetector,
    Rule,
    Rules,
    count_in_window,
    detected_principal,
    distinct_in_window,
    rules_from,
    source_group,
)
from modelplane.settings import DetectionSettings


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


class Counts:
    def __init__(self) -> None:
        self.detected: list[str] = []
        self.refused: list[str] = []

    def attack_detected(self, detector: str) -> None:
        self.detected.append(detector)

    def attack_refused(self, detector: str) -> None:
        self.refused.append(detector)


class Audit:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def record(self, action: str, **fields: Any) -> None:
        self.entries.append({"action": action, **fields})


def detector(block_scan: float = 0.0) -> tuple[AttackDetector, Clock, Counts, Audit]:
    clock, counts, audit = Clock(), Counts(), Audit()
    rules = Rules(Rule(20, 60.0, 300.0), Rule(5, 60.0, block_scan), Rule(3, 10.0, 0.0))
    return AttackDetector(rules, counts, audit, clock), clock, counts, audit


def test_count_in_window_forgets_old_events_and_keeps_at_most_threshold() -> None:
    rule = Rule(3, 10.0)
    times: deque[float] = deque()
    assert [count_in_window(times, t, rule) for t in (0, 1, 2)] == [1, 2, 3]
    assert count_in_window(times, 3, rule) == 3  # capped: only the newest three are kept
    assert count_in_window(times, 13.5, rule) == 1  # 1, 2 and 3 are 10 s old or more
    assert list(times) == [13.5]


def test_distinct_in_window_counts_names_not_requests() -> None:
    rule = Rule(3, 10.0)
    seen: dict[str, float] = {}
    assert distinct_in_window(seen, "a", 0, rule) == 1
    assert distinct_in_window(seen, "a", 1, rule) == 1
    assert distinct_in_window(seen, "b", 2, rule) == 2
    assert distinct_in_window(seen, "c", 11.5, rule) == 2  # "a" was last asked at 1
    assert list(seen) == ["b", "c"]


def test_auth_failures_block_the_source_for_the_cool_down_only() -> None:
    d, clock, counts, audit = detector()
    for _ in range(19):
        d.auth_failed("10.0.0.1", "/v2/models")
        clock.t += 1
    assert d.source_block("10.0.0.1") is None
    d.auth_failed("10.0.0.1", "/v2/models")
    block = d.source_block("10.0.0.1")
    assert block is not None
    assert block.until == clock.t + 300
    assert "blocked until" in block.message("source address 10.0.0.1")
    assert d.source_block("10.0.0.2") is None  # others are not affected
    assert counts.detected == ["auth_failures"]
    assert counts.refused == []  # a block binds requests without a valid key: callers count
    assert audit.entries[0]["action"] == "detect.auth_failures"
    assert audit.entries[0]["source"] == "10.0.0.1"
    assert audit.entries[0]["result"] == "blocked"
    clock.t += 300
    assert d.source_block("10.0.0.1") is None


def test_slow_failures_never_trip() -> None:
    d, clock, counts, _ = detector()
    for _ in range(100):
        d.auth_failed("10.0.0.1", "/")
        clock.t += 4  # 15 a minute, under 20
    assert counts.detected == []
    assert d.source_block("10.0.0.1") is None


def test_a_scan_is_audited_and_blocks_the_key_only_when_configured() -> None:
    d, _, counts, audit = detector()
    for i in range(5):
        d.unknown_model("k1", "ci", "10.0.0.1", f"model-{i}")
    assert counts.detected == ["model_scan"]
    assert audit.entries[0]["result"] == "detected"
    assert d.key_block("k1") is None
    d, _, _, audit = detector(block_scan=60.0)
    for _ in range(10):
        d.unknown_model("k1", "ci", "10.0.0.1", "same-name")  # one name: not a scan
    assert d.key_block("k1") is None
    for i in range(5):
        d.unknown_model("k1", "ci", "10.0.0.1", f"model-{i}")
    assert d.key_block("k1") is not None
    assert audit.entries[0]["key_id"] == "k1"


def test_malformed_bursts_are_counted_per_key() -> None:
    d, _clock, counts, audit = detector()
    for _ in range(2):
        d.bad_request("k1", "ci", "10.0.0.1", "/v2/models/iris/infer", 400)
        d.bad_request("k2", "other", "10.0.0.1", "/v2/models/iris/infer", 413)
    assert counts.detected == []
    d.bad_request("k1", "ci", "10.0.0.1", "/v2/models/iris/infer", 422)
    assert counts.detected == ["malformed"]
    assert "422" in audit.entries[0]["detail"]


def test_tracked_sources_are_bounded() -> None:
    clock, counts = Clock(), Counts()
    rules = Rules(Rule(20, 60.0, 300.0), Rule(5, 60.0), Rule(3, 10.0), max_tracked=100)
    d = AttackDetector(rules, counts, None, clock)
    for i in range(1000):
        d.auth_failed(f"10.0.{i // 256}.{i % 256}", "/")
    assert len(d._failures) == 100


def bad() -> Principal:
    raise Unauthenticated("invalid or revoked API key")


def test_detected_principal_refuses_wrong_keys_from_blocked_sources_only() -> None:
    d, _, counts, _ = detector()
    who = Principal("k1", Role.INVOKER, "ci")
    for _ in range(20):
        with pytest.raises(Unauthenticated):
            detected_principal(d, "10.0.0.1", bad)
    with pytest.raises(Overloaded, match=r"10\.0\.0\.1 is blocked until"):
        detected_principal(d, "10.0.0.1", bad)
    assert counts.refused == ["auth_failures"]
    # a valid key behind the same address (a shared NAT, a proxy) is never locked out
    assert detected_principal(d, "10.0.0.1", lambda: who) is who
    assert detected_principal(d, "10.0.0.2", lambda: who) is who
    assert counts.refused == ["auth_failures"]


def test_ipv6_sources_are_grouped_by_their_64() -> None:
    assert source_group("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert source_group("::ffff:10.0.0.1") == "10.0.0.1"
    assert source_group("10.0.0.1") == "10.0.0.1"
    assert source_group("unix") == "unix"
    d, clock, _, audit = detector()
    for i in range(20):  # a new address of the same /64 for every try
        d.auth_failed(f"2001:db8:1:2::{i + 1:x}", "/")
        clock.t += 1
    block = d.source_block("2001:db8:1:2:ffff::9")
    assert block is not None
    assert audit.entries[0]["source"] == "2001:db8:1:2::14"  # the address that tripped it
    assert d.source_block("2001:db8:1:3::1") is None  # the next /64 is another site


def test_never_block_networks_are_detected_but_not_blocked() -> None:
    clock, counts, audit = Clock(), Counts(), Audit()
    settings = DetectionSettings(never_block="127.0.0.1, 10.1.0.0/16,::1")
    rules = rules_from(settings)
    d = AttackDetector(rules, counts, audit, clock)
    for source in ("10.1.2.3", "::1", "::ffff:127.0.0.1"):
        for _ in range(20):
            d.auth_failed(source, "/")
        assert d.source_block(source) is None
    assert counts.detected == ["auth_failures"] * 3
    assert {e["result"] for e in audit.entries} == {"detected"}
    for _ in range(20):
        d.auth_failed("10.2.0.1", "/")
    assert d.source_block("10.2.0.1") is not None
    assert DetectionSettings().never_block == []
    with pytest.raises(ValueError, match="not an address or CIDR"):
        DetectionSettings(never_block="proxy.local")
