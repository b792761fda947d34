"""Drift statistics: a two-sigma shift is far above the alert threshold, the same distribution
well below it; the window holds the latest rows; a label output counts as the prediction."""

from __future__ import annotations

import numpy as np

from modelplane.telemetry.drift import PSI_ALERT, DriftMonitor, ks, psi


def rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    return (rng.standard_normal((n, 4)) + shift).astype(np.float32)


def test_a_two_sigma_shift_raises_psi_and_ks_and_the_same_distribution_does_not() -> None:
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(reference_rows=1000, window_rows=1000)
    monitor.observe({"x": rows(rng, 1000)}, {})
    assert all("psi" not in d for d in monitor.report().values())  # no window yet
    monitor.observe({"x": rows(rng, 1000)}, {})
    same = monitor.report()
    assert sorted(same) == ["x[0]", "x[1]", "x[2]", "x[3]"]
    assert all(d["psi"] < PSI_ALERT / 2 and d["ks"] < 0.1 for d in same.values()), same
    monitor.observe({"x": rows(rng, 1000, shift=2.0)}, {})
    shifted = monitor.report()
    assert all(d["psi"] > PSI_ALERT and d["ks"] > 0.5 for d in shifted.values()), shifted
    assert shifted["x[0]"]["window_rows"] == 1000
    assert shifted["x[0]"]["reference_rows"] == 1000


def test_the_window_holds_the_latest_rows_only() -> None:
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(reference_rows=500, window_rows=500)
    monitor.observe({"x": rows(rng, 500)}, {})
    for _ in range(10):  # shifted rows, a batch at a time, then the old distribution again
        monitor.observe({"x": rows(rng, 50, shift=2.0)}, {})
    assert monitor.report()["x[0]"]["psi"] > PSI_ALERT
    for _ in range(10):
        monitor.observe({"x": rows(rng, 50)}, {})
    assert monitor.report()["x[0]"]["psi"] < PSI_ALERT / 2


def test_predictions_drift_too() -> None:
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(reference_rows=600, window_rows=600)
    labels = rng.choice([0, 1, 2], size=600, p=[0.6, 0.3, 0.1])
    monitor.observe({"x": rows(rng, 600)}, {"label": labels.astype(np.int64)})
    flipped = rng.choice([0, 1, 2], size=600, p=[0.1, 0.3, 0.6])
    monitor.observe({"x": rows(rng, 600)}, {"label": flipped.astype(np.int64)})
    report = monitor.report()
    assert report["prediction"]["psi"] > PSI_ALERT
    assert report["x[0]"]["psi"] < PSI_ALERT


def test_psi_and_ks_by_hand() -> None:
    same = np.arange(1000, dtype=np.float64)
    assert psi(same, same) == 0.0
    assert ks(same, same) == 0.0
    assert ks(same, same + 1000) == 1.0
    wide = np.random.default_rng(3).standard_normal((10_000, 200))  # one input, many features
    monitor = DriftMonitor(reference_rows=100, window_rows=100)
    monitor.observe({"image": wide[:100]}, {})
    assert list(monitor.report()) == ["image:mean"]
