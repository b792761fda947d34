"""Quotas per key, as pure functions of explicit state and an injected time.

* **rate**: a token bucket. It holds at most ``burst`` tokens and gains ``rate`` a second; a
  request takes one. With none left the request is refused and told how long until the next
  token (``Retry-After``, whole seconds rounded up, at least 1).
* **concurrency**: at most ``max_concurrent`` requests of the key in flight at once.
* **daily**: at most ``daily`` requests a UTC day.
* **tokens**: at most ``daily_tokens`` language-model tokens (prompt and completion, counted
  when a completion or an embedding ends) a UTC day; a request is refused once they are used.

The state lives in ``modelplane.security.limiter.Quotas``; nothing here reads a clock.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

DAY_S = 86_400.0


class Limit(enum.StrEnum):
    RATE = "rate"
    CONCURRENCY = "concurrency"
    DAILY = "daily"
    TOKENS = "tokens"


@dataclass(frozen=True, slots=True)
class Denial:
    """A refused request: which limit, seconds until a retry may pass, and the message."""

    limit: Limit
    retry_after_s: int
    message: str


def default_burst(rate: float) -> int:
    """The burst a key with a rate and no burst of its own gets: one second's worth."""
    return max(1, math.ceil(rate))


def take_token(
    tokens: float, at: float, now: float, rate: float, burst: int
) -> tuple[float, float]:
    """The bucket held ``tokens`` at time ``at``; a request comes at ``now``. Returns the tokens
    left and 0.0 if it may pass, or the tokens (refilled, none taken) and the seconds until
    the next whole token if not."""
    tokens = min(float(burst), tokens + max(0.0, now - at) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


def retry_after(wait_s: float) -> int:
    """``Retry-After`` for a wait: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait_s))


def day_of(wall_s: float) -> int:
    """The UTC day number of a Unix time (the daily budget starts again at each)."""
    return int(wall_s // DAY_S)


def seconds_to_midnight(wall_s: float) -> float:
    return DAY_S - wall_s % DAY_S


def rate_denial(key_id: str, rate: float, burst: int, wait_s: float) -> Denial:
    after = retry_after(wait_s)
    return Denial(
        Limit.RATE,
        after,
        f"API key {key_id} is limited to {rate:g} requests per second (burst {burst}); retry "
        f"after {after} s, or ask an admin to raise the limit: `modelplane keys update "
        f"{key_id} --rate-limit N --burst N`",
    )


def concurrency_denial(key_id: str, max_concurrent: int) -> Denial:
    return Denial(
        Limit.CONCURRENCY,
        1,
        f"API key {key_id} already has {max_concurrent} requests in flight, its limit; retry "
        "when one has finished, or ask an admin to raise the limit: `modelplane keys update "
        f"{key_id} --max-concurrent N`",
    )


def tokens_denial(key_id: str, daily_tokens: int, wall_s: float) -> Denial:
    return _budget_denial(Limit.TOKENS, key_id, f"{daily_tokens} tokens", "--daily-tokens", wall_s)


def daily_denial(key_id: str, daily: int, wall_s: float) -> Denial:
    return _budget_denial(Limit.DAILY, key_id, f"{daily} requests", "--daily", wall_s)


def _budget_denial(limit: Limit, key_id: str, budget: str, flag: str, wall_s: float) -> Denial:
    """A daily budget used up: retry after midnight UTC."""
    after = retry_after(seconds_to_midnight(wall_s))
    return Denial(
        limit,
        after,
        f"API key {key_id} has used its {budget} for today (UTC); retry after midnight UTC (in "
        f"{after} s), or ask an admin to raise the limit: `modelplane keys update {key_id} "
        f"{flag} N`",
    )
