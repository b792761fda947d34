"""Quotas per key: the token bucket's math and the holder's rate, burst, refill, Retry-After,
concurrency and daily budget, all on a fake clock."""

from __future__ import annotations

import pytest

from modelplane.domain import Limits, Principal, Role
from modelplane.security.limiter import Quotas
from modelplane.security.quotas import (
    DAY_S,
    Limit,
    default_burst,
    retry_after,
    seconds_to_midnight,
    take_token,
)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counter:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def labels(self, key_id: str, limit: str) -> Counter.One:
        return Counter.One(self, (key_id, limit))

    class One:
        def __init__(self, parent: Counter, labels: tuple[str, str]) -> None:
            self._parent, self._labels = parent, labels

        def inc(self, amount: float = 1) -> None:
            counts = self._parent.counts
            counts[self._labels] = counts.get(self._labels, 0) + int(amount)


class Trail:
    def __init__(self) -> None:
        self.entries: list[dict[str, object]] = []

    def record(self, action: str, **fields: object) -> None:
        self.entries.append({"action": action, **fields})


def who(limits: Limits | None, key_id: str = "k1") -> Principal:
    return Principal(key_id, Role.INVOKER, "app", limits=limits)


# ---- the pure bucket ---------------------------------------------------------------------------
def test_a_full_bucket_lets_a_request_pass_and_keeps_the_rest() -> None:
    assert take_token(5.0, 0.0, 0.0, rate=1.0, burst=5) == (4.0, 0.0)


def test_an_empty_bucket_says_how_long_until_the_next_token() -> None:
    tokens, wait = take_token(0.25, 10.0, 10.0, rate=2.0, burst=4)
    assert tokens == 0.25
    assert wait == pytest.approx(0.375)


def test_refill_is_capped_at_the_burst() -> None:
    tokens, wait = take_token(0.0, 0.0, 3600.0, rate=50.0, burst=100)
    assert (tokens, wait) == (99.0, 0.0)


def test_a_clock_that_goes_backwards_adds_nothing() -> None:
    assert take_token(0.5, 10.0, 9.0, rate=1.0, burst=1)[0] == 0.5


def test_retry_after_is_whole_seconds_rounded_up_at_least_one() -> None:
    assert retry_after(0.02) == 1
    assert retry_after(1.0) == 1
    assert retry_after(1.01) == 2
    assert retry_after(0.0) == 1


def test_the_default_burst_is_one_seconds_worth() -> None:
    assert default_burst(50) == 50
    assert default_burst(0.5) == 1
    assert default_burst(2.5) == 3


def test_midnight_utc() -> None:
    assert seconds_to_midnight(3 * DAY_S + 60) == DAY_S - 60


# ---- the holder --------------------------------------------------------------------------------
def test_rate_burst_refill_and_retry_after() -> None:
    clock = Clock()
    quotas = Quotas(clock=clock)
    key = who(Limits(rate=10.0, burst=3))
    assert [quotas.admit(key) for _ in range(3)] == [None, None, None]  # the burst
    denial = quotas.admit(key)
    assert denial is not None
    assert denial.limit is Limit.RATE
    assert denial.retry_after_s == 1  # 0.1 s until a token, rounded up
    assert "10 requests per second (burst 3)" in denial.message
    assert "modelplane keys update k1 --rate-limit" in denial.message
    clock.now += 0.1  # one token back
    assert quotas.admit(key) is None
    assert quotas.admit(key) is not None
    clock.now += 10  # refilled to the burst, no more
    assert [quotas.admit(key) is None for _ in range(4)] == [True, True, True, False]


def test_a_slow_rate_tells_the_real_wait() -> None:
    clock = Clock()
    quotas = Quotas(clock=clock)
    key = who(Limits(rate=0.2, burst=1))  # one request per 5 s
    assert quotas.admit(key) is None
    denial = quotas.admit(key)
    assert denial is not None
    assert denial.retry_after_s == 5
    clock.now += 2.5
    denial = quotas.admit(key)
    assert denial is not None
    assert denial.retry_after_s == 3


def test_a_steady_load_gets_the_rate() -> None:
    clock = Clock()
    quotas = Quotas(clock=clock)
    key = who(Limits(rate=50.0, burst=50))
    passed = 0
    for _ in range(200 * 10):  # 200 req/s for 10 s
        clock.now += 1 / 200
        passed += quotas.admit(key) is None
    assert passed == pytest.approx(50 * 10 + 50, abs=2)  # the rate, plus the first burst


def test_concurrency_is_released_when_a_request_ends() -> None:
    quotas = Quotas(clock=Clock())
    key = who(Limits(max_concurrent=2))
    assert quotas.admit(key) is None
    assert quotas.admit(key) is None
    denial = quotas.admit(key)
    assert denial is not None
    assert denial.limit is Limit.CONCURRENCY
    assert denial.retry_after_s == 1
    assert "--max-concurrent" in denial.message
    assert quotas.in_flight("k1") == 2
    quotas.release(key)
    assert quotas.admit(key) is None
    for _ in range(5):  # more releases than admissions never go below zero
        quotas.release(key)
    assert quotas.in_flight("k1") == 0


def test_a_request_refused_for_its_rate_holds_no_concurrency_slot() -> None:
    quotas = Quotas(clock=Clock())
    key = who(Limits(rate=1.0, burst=1, max_concurrent=5))
    assert quotas.admit(key) is None
    assert quotas.admit(key) is not None
    assert quotas.in_flight("k1") == 1


def test_the_daily_budget_starts_again_at_midnight_utc() -> None:
    wall = Clock(10 * DAY_S + DAY_S - 30)  # 30 s before midnight UTC
    quotas = Quotas(clock=Clock(), wall=wall)
    key = who(Limits(daily=3))
    assert [quotas.admit(key) for _ in range(3)] == [None, None, None]
    denial = quotas.admit(key)
    assert denial is not None
    assert denial.limit is Limit.DAILY
    assert denial.retry_after_s == 30
    assert "3 requests for today (UTC)" in denial.message
    wall.now += 31
    assert quotas.admit(key) is None


def test_a_request_refused_for_its_rate_does_not_spend_the_daily_budget() -> None:
    quotas = Quotas(clock=Clock(), wall=Clock())
    key = who(Limits(rate=1.0, burst=1, daily=2))
    assert quotas.admit(key) is None
    for _ in range(10):
        assert quotas.admit(key) is not None
    assert quotas._keys["k1"].used == 1


def test_keys_are_limited_separately() -> None:
    quotas = Quotas(clock=Clock())
    limits = Limits(rate=1.0, burst=1)
    assert quotas.admit(who(limits, "a")) is None
    assert quotas.admit(who(limits, "a")) is not None
    assert quotas.admit(who(limits, "b")) is None


def test_a_refusal_is_counted_by_key_id_and_audited_without_a_secret() -> None:
    counter, trail = Counter(), Trail()
    quotas = Quotas(counter, trail, clock=Clock())
    key = who(Limits(rate=1.0, burst=1))
    quotas.admit(key)
    denial = quotas.admit(key)
    assert denial is not None
    quotas.refuse(key, denial, "10.0.0.7", "POST /v2/models/iris/infer")
    assert counter.counts == {("k1", "rate"): 1}
    [entry] = trail.entries
    assert entry["action"] == "denied"
    assert entry["key_id"] == "k1"
    assert entry["key_name"] == "app"
    assert entry["source"] == "10.0.0.7"
    assert entry["result"] == "429"
    assert entry["detail"] == "quota: rate"


def test_a_key_without_limits_is_let_through() -> None:
    quotas = Quotas(clock=Clock())
    assert quotas.admit(who(None)) is None
    quotas.release(who(None))
    assert quotas.in_flight("k1") == 0
