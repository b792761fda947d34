"""The autoscaling policy over scripted load curves, with a fake clock (one sample a second)."""

import itertools
from collections.abc import Callable

from modelplane.domain import Autoscaling
from modelplane.scheduler.autoscaling import Sample, decide, initial

POLICY = Autoscaling(min_replicas=1, max_replicas=5, target_ongoing_requests=2,
                     upscale_delay_s=3, downscale_delay_s=10)  # fmt: skip


def run(policy: Autoscaling, load: Callable[[int], float], seconds: int) -> list[int]:
    """Replica counts after each second of ``load(t)`` requests in flight."""
    state = initial(policy, policy.min_replicas)
    counts = []
    for t in range(seconds):
        state = decide(policy, state, Sample(float(t), load(t)))
        counts.append(state.replicas)
    return counts


def test_steady_load_holds_the_minimum() -> None:
    assert set(run(POLICY, lambda t: 1.5, 60)) == {1}


def test_ramp_scales_up_after_the_delay_and_never_past_max() -> None:
    counts = run(POLICY, lambda t: t / 4, 80)  # 0 -> 20 requests in flight
    assert counts == sorted(counts)  # a ramp only ever adds
    assert counts[-1] == 5
    assert max(counts) == 5
    assert counts[10] < 5  # each step up waits for the upscale delay, so it trails the ramp


def test_a_short_spike_does_not_scale() -> None:
    counts = run(POLICY, lambda t: 20.0 if t == 30 else 1.0, 60)
    assert set(counts) == {1}


def test_a_sustained_spike_scales_up_then_down_after_the_idle_delay() -> None:
    counts = run(POLICY, lambda t: 8.0 if 10 <= t < 40 else 0.5, 120)
    assert counts[9] == 1
    assert counts[12] == 1  # need seen, delay not over
    up = counts.index(max(counts))
    assert 13 <= up <= 16
    assert max(counts) == 4
    assert counts[45] == 4  # load gone, downscale delay not over
    assert counts[-1] == 1
    down = next(t for t in range(40, 120) if counts[t] < 4)
    assert down >= 40 + 10  # never before the downscale delay


def test_oscillating_load_does_not_flap() -> None:
    counts = run(POLICY, lambda t: 6.0 if (t // 2) % 2 == 0 else 0.0, 120)
    changes = sum(1 for a, b in itertools.pairwise(counts) if a != b)
    assert changes <= 2


def test_scale_to_zero_and_back_on_the_first_request() -> None:
    policy = Autoscaling(min_replicas=0, max_replicas=3, target_ongoing_requests=1,
                         upscale_delay_s=5, downscale_delay_s=20)  # fmt: skip
    counts = run(policy, lambda t: 1.0 if t < 5 or t == 60 else 0.0, 70)
    assert counts[4] == 1
    zero = counts.index(0)
    assert zero >= 5 + 20  # idle for the whole downscale delay first
    assert counts[59] == 0
    assert counts[60] == 1  # the held request brings one replica at once, no upscale delay


def test_latency_target_adds_a_replica() -> None:
    policy = Autoscaling(min_replicas=1, max_replicas=4, target_ongoing_requests=10,
                         target_latency_ms=50, upscale_delay_s=2)  # fmt: skip
    state = initial(policy, 1)
    for t in range(5):
        state = decide(policy, state, Sample(float(t), 1.0, latency_ms=200.0))
    assert state.replicas == 2
