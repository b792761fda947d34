"""The parity report: the original model and its ONNX conversion on the same inputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelplane.convert.base import Arrays
from modelplane.domain import Signature
from modelplane.protocol.datatypes import V2_TO_NUMPY

# (atol, rtol) by output dtype kind/size; integers must match exactly
DEFAULT_TOLERANCE: dict[str, tuple[float, float]] = {
    "float16": (1e-2, 1e-2),
    "float32": (1e-4, 1e-3),
    "float64": (1e-6, 1e-6),
}
LABEL_AGREEMENT = 0.99


def generate_inputs(signature: Signature, batch: int = 64, seed: int = 0) -> Arrays:
    """Inputs that fit the signature: -1 becomes ``batch`` for the first dimension, 16 after."""
    rng = np.random.default_rng(seed)
    inputs: Arrays = {}
    for spec in signature.inputs:
        shape = [(batch if i == 0 else 16) if d == -1 else d for i, d in enumerate(spec.shape)]
        dtype = V2_TO_NUMPY[spec.datatype]
        if spec.datatype == "BYTES":
            inputs[spec.name] = np.array(["a short sample text"] * int(np.prod(shape)),
                                         dtype=object).reshape(shape)  # fmt: skip
        elif dtype.kind == "f":
            inputs[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            inputs[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            inputs[spec.name] = rng.integers(0, 10, shape).astype(dtype)
    return inputs


def _tolerance(dtype: np.dtype[Any], override: float | None) -> tuple[float, float]:
    atol, rtol = DEFAULT_TOLERANCE.get(dtype.name, (0.0, 0.0))
    if override is not None and dtype.kind == "f":
        return override, override
    return atol, rtol


def _tied(expected: Arrays, label: str, differ: Any, tolerance: float | None) -> int:
    """How many of the rows whose labels ``differ`` have their top two probabilities tied
    (within the probability output's tolerance) in the original: a forest's tied vote, where
    the original and ONNX Runtime may pick either class after a rounding difference."""
    if differ is None or not differ.any():
        return 0
    for name, values in expected.items():
        probs = np.asarray(values)
        if name == label or probs.dtype.kind != "f" or probs.ndim != 2:
            continue
        if probs.shape[0] != differ.size or probs.shape[1] < 2:
            continue
        atol, rtol = _tolerance(probs.dtype, tolerance)
        top = np.sort(probs[differ].astype(np.float64), axis=1)[:, -2:]
        return int(np.sum(top[:, 1] - top[:, 0] <= 2 * (atol + rtol * np.abs(top[:, 1]))))
    return 0


def compare(
    expected: Arrays,
    actual: Arrays,
    label_outputs: tuple[str, ...] = (),
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Per output: max absolute and relative error, label agreement for classifiers, pass/fail."""
    outputs = []
    for name, want in expected.items():
        if name not in actual:
            outputs.append({"name": name, "passed": False, "problem": "missing in the ONNX model"})
            continue
        got = np.asarray(actual[name])
        want = np.asarray(want)
        if got.size != want.size:
            problem = f"shape {list(got.shape)} vs {list(want.shape)}"
            outputs.append({"name": name, "passed": False, "problem": problem})
            continue
        got = got.reshape(want.shape)
        entry: dict[str, Any] = {"name": name, "dtype": str(got.dtype)}
        if name in label_outputs:
            differ = (got != want).reshape(len(want), -1).any(axis=1) if want.size else None
            ties = _tied(expected, name, differ, tolerance)
            if ties:
                entry["tied_rows"] = ties  # a tie broken the other way is not a disagreement
            agreed = int(differ.size - differ.sum()) + ties if differ is not None else 0
            agreement = agreed / differ.size if differ is not None else 1.0
            entry["label_agreement"] = agreement
            entry["passed"] = agreement >= LABEL_AGREEMENT
        elif want.dtype.kind in "fc" or got.dtype.kind in "fc":
            a, b = want.astype(np.float64), got.astype(np.float64)
            diff = np.abs(a - b)
            atol, rtol = _tolerance(got.dtype, tolerance)
            entry["max_abs_error"] = float(diff.max()) if diff.size else 0.0
            relative = diff / np.maximum(np.abs(a), 1e-12)
            entry["max_rel_error"] = float(relative.max()) if diff.size else 0.0
            entry["tolerance"] = {"atol": atol, "rtol": rtol}
            entry["passed"] = bool(np.all(diff <= atol + rtol * np.abs(a)))
        else:
            entry["mismatches"] = int(np.sum(got != want))
            entry["passed"] = entry["mismatches"] == 0
        outputs.append(entry)
    return {"passed": bool(outputs) and all(o["passed"] for o in outputs), "outputs": outputs}
