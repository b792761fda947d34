"""Which candidate ``optimize --auto`` keeps: the fastest within the accuracy budget, and a
clear refusal, naming what each candidate did, when none is faster within it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelplane.convert.auto import choose, optimize_auto
from modelplane.errors import InvalidInput
from modelplane.testing import mlp_onnx


def _row(name: str, b1: float, b32: float, drop: float) -> dict[str, Any]:
    return {"name": name, "speedup_batch_1": b1, "speedup_batch_32": b32, "accuracy_drop": drop}


def test_the_fastest_within_the_budget_is_kept() -> None:
    rows = [
        _row("int8 dynamic", 4.0, 4.0, 0.001),
        _row("pruned 75% + int8 dynamic", 12.0, 12.0, 0.04),  # fastest, over the budget
        _row("pruned 50% + int8 dynamic", 8.0, 6.0, 0.004),
        {"name": "int8 static", "error": "cannot calibrate"},
    ]
    assert choose(rows, 0.005)["name"] == "pruned 50% + int8 dynamic"
    assert choose(rows, 0.05)["name"] == "pruned 75% + int8 dynamic"
    assert choose(rows, 0.002)["name"] == "int8 dynamic"


def test_none_faster_within_the_budget_is_refused_with_what_each_did() -> None:
    rows = [_row("graph optimization (all)", 1.01, 1.02, 0.0), _row("int8 dynamic", 3.0, 3.0, 0.02),
            {"name": "int8 static", "error": "cannot calibrate"}]  # fmt: skip
    with pytest.raises(InvalidInput) as raised:
        choose(rows, 0.005)
    message = raised.value.message
    assert "at most 0.50%" in message
    assert "int8 dynamic: 3.00x, 2.00% of rows changed" in message
    assert "int8 static: cannot calibrate" in message
    assert "allow a larger --max-accuracy-drop" in message  # int8 was faster, over the budget
    assert raised.value.status == 400


def test_none_faster_at_all_says_to_keep_the_source() -> None:
    rows = [_row("graph optimization (all)", 0.99, 1.0, 0.0), _row("int8 dynamic", 0.8, 0.7, 0.0)]
    with pytest.raises(InvalidInput, match="none is faster on this model: keep the source"):
        choose(rows, 0.005)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.zeros((0, 8), np.float32), "the samples have no rows"),
        (np.full((50, 8), np.nan, np.float32), "input 'x' has NaN or infinite values"),
        (np.zeros((50, 5), np.float32), "the samples do not fit the model"),
    ],
)
def test_samples_that_cannot_judge_are_refused_before_anything_runs(
    tmp_path: Path, rows: np.ndarray, message: str
) -> None:
    source = tmp_path / "mlp.onnx"
    source.write_bytes(mlp_onnx((8, 16, 3)))
    with pytest.raises(InvalidInput, match=message):
        optimize_auto(source, tmp_path, {"x": rows}, "samples", 0.005)
