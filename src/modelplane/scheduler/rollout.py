"""Pure rollout policy: from a step's measurements to a verdict. No I/O, no clock reads: the
controller passes ``now`` and what the gateway measured since the step began."""

from __future__ import annotations

from dataclasses import dataclass, replace

from modelplane.domain.traffic import Agreement, RolloutPolicy, Split, Window


@dataclass(frozen=True, slots=True)
class Hold:
    reason: str


@dataclass(frozen=True, slots=True)
class Begin:
    """A replica of the candidate is ready: the first step's window begins now."""

    split: Split


@dataclass(frozen=True, slots=True)
class Advance:
    split: Split
    reason: str


@dataclass(frozen=True, slots=True)
class Promote:
    reason: str


@dataclass(frozen=True, slots=True)
class Rollback:
    reason: str


Verdict = Hold | Begin | Advance | Promote | Rollback


def breach(
    policy: RolloutPolicy, candidate: Window, current: Window, agreement: Agreement
) -> str | None:
    """Why the candidate must go, or None. Each test waits for ``min_requests`` samples."""
    enough = policy.min_requests
    if candidate.requests >= enough:
        rate = candidate.errors / candidate.requests
        if rate > policy.max_error_rate:
            return (
                f"error rate {rate:.1%} over {candidate.requests} requests, above the "
                f"limit of {policy.max_error_rate:.1%}"
            )
        if candidate.p99_ms is not None and current.p99_ms is not None:
            limit = policy.max_p99_ratio * current.p99_ms + policy.p99_slack_ms
            if current.requests >= enough and candidate.p99_ms > limit:
                ratio = candidate.p99_ms / max(current.p99_ms, 1e-9)
                return (
                    f"p99 latency {candidate.p99_ms:.1f} ms is {ratio:.1f}x the current "
                    f"version's {current.p99_ms:.1f} ms, above the limit of "
                    f"{policy.max_p99_ratio:g}x"
                )
    if agreement.rows >= enough:
        share = agreement.disagreeing / agreement.rows
        if share > policy.max_disagreement:
            return (
                f"outputs disagree with the current version's on {share:.1%} of "
                f"{agreement.rows} compared rows (largest difference "
                f"{agreement.max_abs_diff:.3g}), above the limit of {policy.max_disagreement:.1%}"
            )
    return None


def judge(
    policy: RolloutPolicy,
    split: Split,
    now: float,
    *,
    ready: bool,
    candidate: Window,
    current: Window,
    agreement: Agreement,
) -> Verdict:
    """The next move of a rollout at ``split``: a breach rolls back at once, at any moment of
    a step; a step that lasted its interval with enough traffic and no breach moves to the next
    share, and the last step promotes."""
    if split.since <= 0:
        if not ready:
            return Hold("waiting for a ready replica of the new version")
        return Begin(replace(split, since=now))
    why = breach(policy, candidate, current, agreement)
    if why is not None:
        return Rollback(why)
    elapsed = now - split.since
    if elapsed < policy.interval_s:
        return Hold(f"step {split.step + 1} of {len(policy.steps)} ({split.percent:g}%): "
                    f"{elapsed:.0f} s of {policy.interval_s:g} s")  # fmt: skip
    if candidate.requests < policy.min_requests:
        return Hold(
            f"step {split.step + 1} ({split.percent:g}%) waits for traffic: "
            f"{candidate.requests} of {policy.min_requests} requests reached the new version"
        )
    held = _summary(candidate, current, agreement)
    following = [s for s in policy.steps if s > split.percent]
    if not following or split.percent >= 100:
        return Promote(f"every step held ({held})")
    step = min(split.step + 1, len(policy.steps) - 1)
    return Advance(
        replace(split, percent=following[0], step=step, since=now),
        f"{split.percent:g}% held ({held}); now {following[0]:g}%",
    )


def _summary(candidate: Window, current: Window, agreement: Agreement) -> str:
    parts = [f"{candidate.errors} errors in {candidate.requests} requests"]
    if candidate.p99_ms is not None and current.p99_ms is not None:
        parts.append(f"p99 {candidate.p99_ms:.1f} ms vs {current.p99_ms:.1f} ms")
    if agreement.rows:
        parts.append(f"{agreement.disagreeing} of {agreement.rows} rows disagree")
    return ", ".join(parts)
