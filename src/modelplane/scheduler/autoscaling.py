"""The autoscaling policy: a pure function of load samples and an injected time. No I/O.

Each reconcile step the controller hands ``decide`` the deployment's load over the last interval
(average requests in flight, from the gateway's busy time: Little's law) and, optionally, its mean
latency. Each sample asks for ``ceil(load / target_ongoing_requests)`` replicas (one more than
now while latency is above its target), clamped to ``[min, max]``. The policy acts only when
every sample for ``upscale_delay_s`` asked for more (it then goes to the least of what they
asked), or every sample for ``downscale_delay_s`` asked for fewer (it goes to the most of what
they asked), so spikes and lulls shorter than the delays change nothing.
A deployment at zero replicas scales to one at once when a request arrives (the gateway holds it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelplane.domain import Autoscaling


@dataclass(frozen=True, slots=True)
class Sample:
    time: float
    ongoing: float  # average requests in flight over the interval ending at ``time``
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class ScaleState:
    replicas: int
    wants: tuple[int, ...] = ()  # what each sample since the need began asked for
    up_since: float | None = None
    down_since: float | None = None


def initial(policy: Autoscaling, replicas: int) -> ScaleState:
    return ScaleState(min(max(replicas, policy.min_replicas), policy.max_replicas))


def need(policy: Autoscaling, current: int, sample: Sample) -> int:
    """Replicas one sample asks for, within the bounds."""
    wanted = math.ceil(sample.ongoing / policy.target_ongoing_requests - 1e-9)
    slow = (
        policy.target_latency_ms is not None
        and sample.latency_ms is not None
        and sample.latency_ms > policy.target_latency_ms
    )
    if slow and current > 0:
        wanted = max(wanted, current + 1)
    return min(max(wanted, policy.min_replicas), policy.max_replicas)


def decide(policy: Autoscaling, state: ScaleState, sample: Sample) -> ScaleState:
    """The next state after ``sample``; ``.replicas`` is how many the deployment should run."""
    now = sample.time
    current = min(max(state.replicas, policy.min_replicas), policy.max_replicas)
    wanted = need(policy, current, sample)
    if current == 0 and sample.ongoing > 0:
        # cold start: requests are held at the gateway; never wait to serve them
        return ScaleState(max(1, wanted))
    if wanted > current:
        since = state.up_since if state.up_since is not None else now
        wants = (*state.wants, wanted) if state.up_since is not None else (wanted,)
        if now - since >= policy.upscale_delay_s:
            return ScaleState(min(wants))
        return ScaleState(current, wants, up_since=since)
    if wanted < current:
        since = state.down_since if state.down_since is not None else now
        wants = (*state.wants, wanted) if state.down_since is not None else (wanted,)
        if now - since >= policy.downscale_delay_s:
            return ScaleState(max(wants))
        return ScaleState(current, wants, down_since=since)
    return ScaleState(current)
