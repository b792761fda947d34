"""Input statistics and the outlier rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelplane.errors import InvalidInput
from modelplane.security.inputguard import InputGuard, guard_from, input_stats, load_samples


def samples() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.normal([0.0, 10.0, 100.0], [1.0, 2.0, 5.0], (500, 3)).astype(np.float32)}


def test_stats_are_per_feature_for_2d_inputs_and_overall_otherwise() -> None:
    stats = input_stats({**samples(), "img": np.ones((2, 3, 4), np.float32), "t": np.array(["a"])})
    x = stats["x"]
    assert x["per_feature"] is True
    assert x["count"] == 500
    assert len(x["mean"]) == 3
    assert x["std"][2] == pytest.approx(5.0, rel=0.1)
    assert stats["img"]["per_feature"] is False
    assert stats["img"]["min"] == [1.0]
    assert "t" not in stats  # text has no range
    json.dumps(stats)  # kept as JSON


def test_a_value_50_std_beyond_the_range_is_an_outlier_and_says_how_far() -> None:
    stats = input_stats(samples())
    guard = InputGuard(stats, sigmas=6.0)
    inside = np.array([[0.5, 11.0, 99.0]], np.float32)
    assert guard.check({"x": inside}) is None
    far = float(stats["x"]["max"][1] + 50 * stats["x"]["std"][1])
    found = guard.check({"x": np.array([[0.5, far, 99.0]], np.float32)})
    assert found is not None
    assert found.feature == 1
    assert found.sigmas == pytest.approx(50.0, rel=1e-3)
    assert "input 'x' feature 1" in found.message()
    assert "50.0 standard deviations above" in found.message()
    below = guard.check({"x": np.array([[-100.0, 10.0, 100.0]], np.float32)})
    assert below is not None
    assert "below the smallest" in below.message()


def test_no_guard_without_statistics_or_when_off() -> None:
    stats = input_stats(samples())
    assert guard_from(None, "reject", 6.0) is None
    assert guard_from(stats, "off", 6.0) is None
    assert guard_from(stats, "log", 6.0) is not None


def test_samples_load_bounded_and_never_unpickled(tmp_path: object) -> None:
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((1000, 100), np.float64))
    assert load_samples(buffer.getvalue(), 10 << 20)["x"].shape == (1000, 100)
    with pytest.raises(InvalidInput, match="unpack to more than"):
        load_samples(buffer.getvalue(), 1000)
    assert load_samples(b'{"x": [[1, 2]]}', 1000)["x"].shape == (1, 2)
    with pytest.raises(InvalidInput):
        load_samples(b"not json", 1000)
