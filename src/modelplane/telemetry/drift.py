"""How far a replica's live inputs and predictions have drifted from a reference.

The reference is the first ``reference_rows`` rows the replica served (a version's first
traffic: what it was deployed for); the window is the latest ``window_rows`` rows after it. For
each feature (a column of a 2-D input of up to ``MAX_FEATURES`` columns; a larger input counts
as one feature, its rows' mean) and for the prediction (the arg-max of a score output, a label
output, or a single value), the population stability index (PSI, over ten bins cut at the
reference's deciles) and the two-sample Kolmogorov-Smirnov statistic compare the window with
the reference. The usual reading of PSI: under 0.1 no shift, 0.1-0.2 a moderate one, above 0.2
a significant one (``PSI_ALERT``, the shipped alert rule's threshold).

``observe`` copies a request's rows into bounded buffers (called after the answer is on its way,
never before it); ``report`` computes the statistics when the replica is asked for its stats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

REFERENCE_ROWS = 1000
WINDOW_ROWS = 1000
MIN_ROWS = 100  # a window smaller than this is not compared yet
MAX_FEATURES = 64
BINS = 10
PSI_ALERT = 0.2
EPSILON = 1e-4  # an empty bin's share: keeps the logarithm finite


def _features(name: str, array: np.ndarray) -> dict[str, np.ndarray]:
    """Columns of one tensor, by feature name, as float64 [rows]."""
    if array.dtype.kind not in "biuf" or array.ndim == 0 or array.shape[0] == 0:
        return {}
    rows = array.shape[0]
    values = array.reshape(rows, -1).astype(np.float64)
    if values.shape[1] <= MAX_FEATURES and array.ndim <= 2:
        if values.shape[1] == 1:
            return {name: values[:, 0]}
        return {f"{name}[{i}]": values[:, i] for i in range(values.shape[1])}
    return {f"{name}:mean": values.mean(axis=1)}


def _prediction(outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """One value per row for the prediction: a label output as it is; else the arg-max of the
    first score output of two or more columns; else the first single-valued output."""
    for array in outputs.values():
        if array.dtype.kind in "biu" and array.ndim >= 1 and array.size == array.shape[0]:
            return array.reshape(-1).astype(np.float64)
    for array in outputs.values():
        if array.dtype.kind == "f" and array.ndim == 2 and array.shape[1] >= 2:
            labels: np.ndarray = np.argmax(array, axis=1)
            return labels.astype(np.float64)
    for array in outputs.values():
        if array.dtype.kind == "f" and array.ndim >= 1 and array.size == array.shape[0]:
            return array.reshape(-1).astype(np.float64)
    return None


def psi(reference: np.ndarray, window: np.ndarray) -> float:
    """Population stability index of ``window`` against ``reference``: ten bins at the
    reference's deciles (fewer where values repeat: a label takes one bin per value)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, BINS + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, reference, side="right"),
                           minlength=len(edges) + 1) / len(reference)  # fmt: skip
    actual = np.bincount(np.searchsorted(edges, window, side="right"),
                         minlength=len(edges) + 1) / len(window)  # fmt: skip
    expected, actual = np.maximum(expected, EPSILON), np.maximum(actual, EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks(reference: np.ndarray, window: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two
    empirical distribution functions."""
    a, b = np.sort(reference), np.sort(window)
    points = np.concatenate([a, b])
    gap = np.searchsorted(a, points, side="right") / len(a) - np.searchsorted(
        b, points, side="right"
    ) / len(b)
    return float(np.max(np.abs(gap)))


class _Series:
    """One feature's reference (filled first, then frozen) and its window (a ring)."""

    __slots__ = ("at", "filled", "reference", "seen", "window")

    def __init__(self, reference_rows: int, window_rows: int) -> None:
        self.reference = np.empty(reference_rows)
        self.filled = 0
        self.window = np.empty(window_rows)
        self.at = 0  # the ring's next slot
        self.seen = 0  # rows in the window so far (at most its size)

    def add(self, values: np.ndarray) -> None:
        room = len(self.reference) - self.filled
        if room > 0:
            taken = values[:room]
            self.reference[self.filled : self.filled + len(taken)] = taken
            self.filled += len(taken)
            values = values[room:]
        values = values[-len(self.window) :]  # a batch bigger than the window: its last rows
        slots = (self.at + np.arange(len(values))) % len(self.window)
        self.window[slots] = values
        self.at = (self.at + len(values)) % len(self.window)
        self.seen = min(len(self.window), self.seen + len(values))


class DriftMonitor:
    def __init__(
        self, reference_rows: int = REFERENCE_ROWS, window_rows: int = WINDOW_ROWS
    ) -> None:
        self._reference_rows = reference_rows
        self._window_rows = window_rows
        self._series: dict[str, _Series] = {}
        self._rows = 0  # rows observed so far: a report is worked out again only after more
        self._reported: tuple[int, dict[str, dict[str, Any]]] = (-1, {})

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        columns: dict[str, np.ndarray] = {}
        for name, array in inputs.items():
            columns.update(_features(name, array))
        predicted = _prediction(outputs)
        if predicted is not None:
            columns["prediction"] = predicted
        for feature, values in columns.items():
            series = self._series.get(feature)
            if series is None:
                if len(self._series) >= 4 * MAX_FEATURES:
                    continue
                series = self._series[feature] = _Series(self._reference_rows, self._window_rows)
            series.add(values if np.isfinite(values).all() else np.nan_to_num(values))
        self._rows += max((len(v) for v in columns.values()), default=0)

    def report(self) -> dict[str, dict[str, Any]]:
        """Per feature: rows in the reference and the window, and (once both are big enough)
        PSI and KS of the window against the reference."""
        if self._reported[0] == self._rows:
            return self._reported[1]
        features: dict[str, dict[str, Any]] = {}
        for feature, s in self._series.items():
            entry: dict[str, Any] = {"reference_rows": s.filled, "window_rows": s.seen}
            if s.filled == len(s.reference) and s.seen >= MIN_ROWS:
                window = s.window[: s.seen]
                entry["psi"] = round(psi(s.reference, window), 6)
                entry["ks"] = round(ks(s.reference, window), 6)
            features[feature] = entry
        self._reported = (self._rows, features)
        return features
