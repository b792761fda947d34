"""Traffic between two versions of a deployment: a canary's share of requests, a shadow that
sees copies of them, and the rollout policy that moves the share step by step."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


class SplitMode(enum.StrEnum):
    """``canary``: the candidate answers ``percent`` of requests until promoted or rolled back.
    ``shadow``: the current version answers every request; the candidate gets a copy of each,
    whose answer is compared and discarded. ``rollout``: a canary whose share the controller
    moves through the rollout policy's steps, judging each from the platform's metrics."""

    CANARY = "canary"
    SHADOW = "shadow"
    ROLLOUT = "rollout"


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _seconds(text: str) -> float:
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"invalid interval {text!r}: use 30s, 2m or 1h")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def parse_share(text: str, what: str) -> float:
    """``1%`` or ``0.01`` as a fraction."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"invalid {what} {text!r}: use a percentage such as 1%") from None
    return value


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """How a new version takes over: the candidate's share of requests at each step, how long a
    step lasts, and what rolls it back. A step is judged over its own window against the
    current version over the same window: the candidate's error rate, its p99 latency as a
    multiple of the current version's (differences under ``p99_slack_ms`` are noise on a busy
    machine, not judged), and how often its outputs disagree with the current version's on the
    same inputs. Nothing is judged before ``min_requests`` requests reached the candidate."""

    steps: tuple[float, ...] = (10.0, 50.0, 100.0)
    interval_s: float = 120.0
    max_error_rate: float = 0.01
    max_p99_ratio: float = 1.2
    max_disagreement: float = 0.02
    min_requests: int = 20
    p99_slack_ms: float = 2.0

    KEYS = {
        "steps": "steps", "interval": "interval_s", "max-error-rate": "max_error_rate",
        "max-p99-ratio": "max_p99_ratio", "max-disagreement": "max_disagreement",
        "min-requests": "min_requests", "p99-slack-ms": "p99_slack_ms",
    }  # fmt: skip

    @classmethod
    def parse(cls, text: str) -> RolloutPolicy:
        """``steps=10,50,100 interval=2m max-error-rate=1% max-p99-ratio=1.2
        max-disagreement=2%``; what is left out keeps its default. Raises ValueError."""
        given: dict[str, Any] = {}
        for item in text.replace(";", " ").split():
            key, sep, value = item.partition("=")
            if not sep or key not in cls.KEYS:
                known = ", ".join(cls.KEYS)
                raise ValueError(f"invalid rollout setting {item!r}: use KEY=VALUE with {known}")
            field = cls.KEYS[key]
            if field == "steps":
                try:
                    given[field] = [float(s.rstrip("%")) for s in value.split(",") if s]
                except ValueError:
                    raise ValueError(
                        f"invalid steps {value!r}: use percentages like 10,50,100"
                    ) from None
            elif field == "interval_s":
                given[field] = _seconds(value)
            elif field in ("max_error_rate", "max_disagreement"):
                given[field] = parse_share(value, key)
            else:
                try:
                    given[field] = float(value)
                except ValueError:
                    raise ValueError(f"invalid {key} {value!r}: use a number") from None
        return cls.from_dict(given)

    def __post_init__(self) -> None:
        if not self.steps or any(not 0 < s <= 100 for s in self.steps):
            raise ValueError(f"rollout steps must be percentages in (0, 100], got {self.steps}")
        if list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"rollout steps must rise, got {list(self.steps)}")
        if self.interval_s <= 0:
            raise ValueError("a rollout step's interval must be above 0 s")
        if not 0 <= self.max_error_rate <= 1 or not 0 <= self.max_disagreement <= 1:
            raise ValueError("max-error-rate and max-disagreement are shares from 0% to 100%")
        if self.max_p99_ratio < 1:
            raise ValueError(f"max-p99-ratio must be at least 1, got {self.max_p99_ratio}")
        if self.min_requests < 1 or self.p99_slack_ms < 0:
            raise ValueError("min-requests must be at least 1 and p99-slack-ms at least 0")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"steps": list(self.steps)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPolicy:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown rollout setting(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        values = dict(data)
        if "steps" in values:
            values["steps"] = tuple(float(s) for s in values["steps"])
        if "min_requests" in values:
            values["min_requests"] = int(values["min_requests"])
        return cls(**values)

    def describe(self) -> str:
        steps = ",".join(f"{s:g}" for s in self.steps)
        return (
            f"steps={steps} interval={self.interval_s:g}s "
            f"max-error-rate={self.max_error_rate * 100:g}% max-p99-ratio={self.max_p99_ratio:g} "
            f"max-disagreement={self.max_disagreement * 100:g}%"
        )


@dataclass(frozen=True, slots=True)
class Split:
    """The candidate's share of a deployment's requests. ``step`` and ``since`` belong to a
    rollout: the step reached, and when its window began (wall-clock seconds; 0 until a replica
    of the candidate is ready, so a slow start does not count against it)."""

    mode: SplitMode
    percent: float
    step: int = 0
    since: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.percent <= 100:
            raise ValueError(f"a canary's share is a percentage from 0 to 100, got {self.percent}")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "percent": self.percent, "step": self.step,
                "since": self.since}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Split:
        return cls(SplitMode(data["mode"]), float(data["percent"]), int(data.get("step", 0)),
                   float(data.get("since", 0.0)))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Window:
    """One version's requests over a step's window: how many, how many failed (5xx, or no
    answer), and the 99th percentile latency (None with no request)."""

    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Agreement:
    """The candidate's answers against the current version's on the same inputs: rows
    compared, rows whose label (or value, beyond tolerance) differs, and the largest absolute
    difference of any output value."""

    rows: int = 0
    disagreeing: int = 0
    max_abs_diff: float = 0.0
