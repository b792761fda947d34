"""The state behind the quotas of ``modelplane.security.quotas``: one small record per limited
key, kept in memory by each gateway, and the one place both surfaces (the HTTP middleware for
``/api/v1``, ``/v2``, ``/metrics`` and the dashboard; the gRPC servicer) ask.

A key without limits (``Principal.limits is None``) never reaches this module. Everything runs
on the server's one event loop, so there are no locks. The daily count restarts with the server
and is per gateway (several gateways behind a balancer each allow the daily budget).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from modelplane.domain import Principal
from modelplane.security.quotas import (
    Denial,
    concurrency_denial,
    daily_denial,
    day_of,
    rate_denial,
    take_token,
    tokens_denial,
)
from modelplane.telemetry.audit import DENIED, RECORDED


class Recorder(Protocol):
    """``modelplane.telemetry.audit.AuditTrail``: queues an entry, never blocks."""

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
    ) -> None: ...


class Counted(Protocol):
    """A labelled Prometheus counter (``Metrics.key_limited``)."""

    def labels(self, key_id: str, limit: str) -> _Incrementable: ...


class _Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _KeyState:
    __slots__ = ("at", "day", "in_flight", "spent", "tokens", "used")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens  # the rate's bucket
        self.at = at
        self.in_flight = 0
        self.day = -1
        self.used = 0  # requests today
        self.spent = 0  # language-model tokens today


class Quotas:
    def __init__(
        self,
        limited: Counted | None = None,
        audit: Recorder | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._limited = limited
        self.audit = audit
        self._clock = clock
        self._wall = wall
        self._keys: dict[str, _KeyState] = {}

    def admit(self, who: Principal) -> Denial | None:
        """Let a request of a limited key in (None; then ``release`` it when it ends) or say
        why not. Checks concurrency, then the daily budget, then takes a token."""
        limits = who.limits
        if limits is None:  # callers check first: keys without limits never come here
            return None
        state = self._keys.get(who.key_id)
        now = self._clock()
        if state is None:
            state = self._keys[who.key_id] = _KeyState(float(limits.burst), now)
        if limits.max_concurrent is not None and state.in_flight >= limits.max_concurrent:
            return concurrency_denial(who.key_id, limits.max_concurrent)
        if limits.daily is not None or limits.daily_tokens is not None:
            wall = self._wall()
            self._today(state, wall)
            if limits.daily is not None and state.used >= limits.daily:
                return daily_denial(who.key_id, limits.daily, wall)
            if limits.daily_tokens is not None and state.spent >= limits.daily_tokens:
                return tokens_denial(who.key_id, limits.daily_tokens, wall)
        if limits.rate is not None:
            state.tokens, wait_s = take_token(
                state.tokens, state.at, now, limits.rate, limits.burst
            )
            state.at = now
            if wait_s:
                return rate_denial(who.key_id, limits.rate, limits.burst, wait_s)
        if limits.daily is not None:
            state.used += 1
        if limits.max_concurrent is not None:
            state.in_flight += 1
        return None

    @staticmethod
    def _today(state: _KeyState, wall: float) -> None:
        today = day_of(wall)
        if state.day != today:
            state.day, state.used, state.spent = today, 0, 0

    def tokens_left(self, who: Principal) -> int | None:
        """What is left of the key's token budget today; None for a key without one."""
        limits = who.limits
        if limits is None or limits.daily_tokens is None:
            return None
        return max(0, limits.daily_tokens - self._state(who, limits.burst).spent)

    def spend(self, who: Principal, tokens: int) -> None:
        """Count language-model tokens against the key's budget: set aside when a request
        starts (its most), settled (a negative amount gives back) when it ends."""
        limits = who.limits
        if limits is None or limits.daily_tokens is None or not tokens:
            return
        state = self._state(who, limits.burst)
        state.spent = max(0, state.spent + tokens)

    def _state(self, who: Principal, burst: int) -> _KeyState:
        state = self._keys.get(who.key_id)
        if state is None:
            state = self._keys[who.key_id] = _KeyState(float(burst), self._clock())
        self._today(state, self._wall())
        return state

    def release(self, who: Principal) -> None:
        """A request ``admit`` let in has ended."""
        limits = who.limits
        if limits is not None and limits.max_concurrent is not None:
            state = self._keys.get(who.key_id)
            if state is not None and state.in_flight > 0:
                state.in_flight -= 1

    def refuse(self, who: Principal, denial: Denial, source: str, target: str) -> None:
        """Count a refusal in ``/metrics`` (by key id, never a name or secret) and audit it."""
        if self._limited is not None:
            self._limited.labels(who.key_id, denial.limit.value).inc()
        if self.audit is not None:
            self.audit.record(
                DENIED, key_id=who.key_id, key_name=who.name, source=source, target=target,
                result="429", detail=f"quota: {denial.limit.value}",
            )  # fmt: skip

    def in_flight(self, key_id: str) -> int:
        state = self._keys.get(key_id)
        return state.in_flight if state is not None else 0


def too_many_body(denial: Denial) -> bytes:
    return orjson.dumps({"error": denial.message, "code": "resource_exhausted"})


async def serve_limited(
    quotas: Quotas, who: Principal, app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve an HTTP request of a key with limits: 429 with ``Retry-After`` when over one."""
    denial = quotas.admit(who)
    if denial is None:
        try:
            await app(scope, receive, send)
        finally:
            quotas.release(who)
        return
    client = scope.get("client")
    source = str(client[0]) if client else "unknown"
    quotas.refuse(who, denial, source, f"{scope['method']} {scope['path']}")
    if quotas.audit is not None:
        scope.setdefault("state", {})[RECORDED] = True  # not recorded again by the middleware
    body = too_many_body(denial)
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(denial.retry_after_s).encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
