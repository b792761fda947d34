"""What the gateway measures of a deployment's two versions while a canary, shadow or rollout
runs: each request's latency and whether it failed, and how the versions' answers to the same
inputs agree. The controller judges rollout steps on it. Kept only for routes with a second
version, in bounded memory; a sample costs an append on the request's path."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily

from modelplane.domain.traffic import Agreement, Window

KEPT = 20_000  # samples per version (and comparisons per deployment): minutes of heavy traffic


class VersionWatch:
    def __init__(self, clock: Callable[[], float] = time.time, kept: int = KEPT) -> None:
        self._clock = clock
        self._kept = kept
        # (name, version) -> (when, seconds, failed)
        self._samples: dict[tuple[str, str], deque[tuple[float, float, bool]]] = {}
        # name -> (when, rows, disagreeing, largest difference)
        self._compared: dict[str, deque[tuple[float, int, int, float]]] = {}
        self.shed = 0  # comparison copies not sent: too many in flight already
        self._totals: dict[str, list[int]] = {}  # name -> [rows compared, disagreeing]

    def record(self, name: str, version: str, seconds: float, status: int) -> None:
        samples = self._samples.get((name, version))
        if samples is None:
            samples = self._samples[(name, version)] = deque(maxlen=self._kept)
        samples.append((self._clock(), seconds, status >= 500))

    def compared(self, name: str, found: Agreement) -> None:
        compared = self._compared.get(name)
        if compared is None:
            compared = self._compared[name] = deque(maxlen=self._kept)
        compared.append((self._clock(), found.rows, found.disagreeing, found.max_abs_diff))
        totals = self._totals.setdefault(name, [0, 0])
        totals[0] += found.rows
        totals[1] += found.disagreeing

    def window(self, deployment: str, version: str, since: float) -> Window:
        samples = [s for s in self._samples.get((deployment, version), ()) if s[0] >= since]
        if not samples:
            return Window()
        latencies = np.fromiter((s[1] for s in samples), dtype=np.float64, count=len(samples))
        errors = sum(1 for s in samples if s[2])
        return Window(len(samples), errors, float(np.percentile(latencies, 99)) * 1000)

    def agreement(self, deployment: str, since: float) -> Agreement:
        rows = disagreeing = 0
        largest = 0.0
        for when, n, bad, diff in self._compared.get(deployment, ()):
            if when >= since:
                rows, disagreeing, largest = rows + n, disagreeing + bad, max(largest, diff)
        return Agreement(rows, disagreeing, largest)

    def prune(self, watched: set[str]) -> None:
        """Forget the deployments that no longer serve two versions."""
        for key in [k for k in self._samples if k[0] not in watched]:
            del self._samples[key]
        for name in [n for n in self._compared if n not in watched]:
            del self._compared[name]
        for name in [n for n in self._totals if n not in watched]:
            del self._totals[name]

    def collect(self) -> Iterator[CounterMetricFamily]:
        """``/metrics``: rows both versions answered, those whose outputs differ, and the
        copies shed."""
        compared = CounterMetricFamily(
            "modelplane_compared_rows", "Rows answered by both versions of a deployment "
            "(shadow or rollout copies) and compared", labels=["model"])  # fmt: skip
        disagreeing = CounterMetricFamily(
            "modelplane_disagreeing_rows", "Compared rows whose outputs differed between the "
            "two versions (label, or value beyond tolerance)", labels=["model"])  # fmt: skip
        for name, (rows, bad) in sorted(self._totals.items()):
            compared.add_metric([name], rows)
            disagreeing.add_metric([name], bad)
        shed = CounterMetricFamily(
            "modelplane_shed_copies", "Shadow and comparison copies not sent: too many in flight"
        )
        shed.add_metric([], self.shed)
        yield compared
        yield disagreeing
        yield shed
