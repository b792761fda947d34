"""Optimizing an ONNX model: ONNX Runtime graph optimizations stored in the file, int8
quantization (dynamic, or static calibrated on sample inputs), fp16 weights (inputs and outputs
stay as they were), and structured pruning (``prune.py``). Runs in the conversion worker; the
report has measured latency before and after and the accuracy change on the same inputs.

``optimize`` applies what the user chose; ``optimize_auto`` (``auto.py``) tries them all."""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from modelplane.convert.base import QUANTIZATIONS, Arrays
from modelplane.convert.parity import compare
from modelplane.errors import InvalidInput

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
BATCHES = (1, 32)  # the batch sizes latency is measured at


def session(path: Path) -> ort.InferenceSession:
    """One thread, as a replica on a busy machine would have: speedups measured alike."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency_ms(session: ort.InferenceSession, inputs: Arrays, budget_s: float = 1.0) -> float:
    """The median time of one run, over ``budget_s`` of runs (at least 5) after a warm-up."""
    session.run(None, inputs)
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def batch(inputs: Arrays, size: int) -> Arrays:
    """``inputs`` cut or repeated to ``size`` rows."""
    return {k: np.resize(v, (size, *v.shape[1:])).astype(v.dtype) for k, v in inputs.items()}


def graph_level(source: Path, out: Path, level: str) -> Path:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return out


def int8_dynamic(source: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8)
    return out


def int8_static(source: Path, out: Path, inputs: Arrays) -> Path:
    """Weights and activations in int8, the activations' ranges calibrated on ``inputs``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    rows = len(next(iter(inputs.values())))

    class Calibration(CalibrationDataReader):  # type: ignore[misc]  # untyped base
        def __init__(self) -> None:
            self._at = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._at >= rows:
                return None
            start, self._at = self._at, self._at + 32
            return {k: v[start : self._at] for k, v in inputs.items()}

    quantize_static(str(source), str(out), Calibration(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    return out


def fp16(source: Path, out: Path) -> Path:
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # "number truncated" for tiny weights, expected in fp16
        warnings.simplefilter("ignore", UserWarning)
        model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(out))
    return out


def optimize(
    source: Path,
    workdir: Path,
    level: str | None,
    quantize: str | None,
    inputs: Arrays,
    origin: str,
) -> dict[str, Any]:
    """``source`` with ``quantize`` then ``level`` applied, as ``workdir/model.onnx``; its
    latency and answers against the source's on ``inputs`` (described by ``origin``)."""
    if level is not None and level not in LEVELS:
        raise InvalidInput(f"unknown level {level!r}; use basic, extended or all")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise InvalidInput(f"unknown quantization {quantize!r}; use int8 or fp16")
    current = source
    if quantize == "int8":
        current = int8_dynamic(current, workdir / "quantized.onnx")
    elif quantize == "fp16":
        current = fp16(current, workdir / "fp16.onnx")
    result = workdir / "model.onnx"
    if level is not None:
        graph_level(current, result, level)
    else:
        result.write_bytes(current.read_bytes())

    before, after = session(source), session(result)
    names = [o.name for o in before.get_outputs()]
    expected = dict(zip(names, before.run(names, inputs), strict=True))
    actual = dict(zip(names, after.run(names, inputs), strict=True))
    accuracy = compare(expected, actual)
    latency = {}
    for size in BATCHES:
        feeds = batch(inputs, size)
        b, a = latency_ms(before, feeds), latency_ms(after, feeds)
        latency[f"batch_{size}"] = {"before_ms": round(b, 4), "after_ms": round(a, 4),
                                    "speedup": round(b / a, 2) if a else None}  # fmt: skip
    return {
        "optimization": {
            "level": level,
            "quantize": quantize,
            "latency": latency,
            "size_before": source.stat().st_size,
            "size_after": result.stat().st_size,
        },
        "passed": accuracy["passed"],
        "outputs": accuracy["outputs"],
        "inputs": f"{origin}, compared with the source version",
        "batch": len(next(iter(inputs.values()))) if inputs else 0,
    }
