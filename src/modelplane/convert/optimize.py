"""Optimizing an ONNX model: ONNX Runtime graph optimizations stored in the file, dynamic int8
quantization, fp16 weights (inputs and outputs stay as they were). Runs in the conversion worker;
the report has measured latency before and after and the accuracy change on the same inputs."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from modelplane.convert import onnx as onnx_source
from modelplane.convert.base import QUANTIZATIONS, Arrays
from modelplane.convert.parity import compare, generate_inputs
from modelplane.errors import InvalidInput

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _latency_ms(session: ort.InferenceSession, inputs: Arrays, budget_s: float = 1.0) -> float:
    session.run(None, inputs)
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _batch(inputs: Arrays, size: int) -> Arrays:
    return {k: np.resize(v, (size, *v.shape[1:])).astype(v.dtype) for k, v in inputs.items()}


def optimize(
    source: Path, workdir: Path, level: str | None, quantize: str | None
) -> dict[str, Any]:
    if level is not None and level not in LEVELS:
        raise InvalidInput(f"unknown level {level!r}; use basic, extended or all")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise InvalidInput(f"unknown quantization {quantize!r}; use int8 or fp16")
    current = source
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = workdir / "quantized.onnx"
        quantize_dynamic(str(current), str(out), weight_type=QuantType.QInt8)
        current = out
    elif quantize == "fp16":
        import warnings

        from onnxconverter_common import float16

        out = workdir / "fp16.onnx"
        with warnings.catch_warnings():  # "number truncated" for tiny weights, expected in fp16
            warnings.simplefilter("ignore", UserWarning)
            model = float16.convert_float_to_float16(onnx.load(str(current)), keep_io_types=True)
        onnx.save(model, str(out))
        current = out
    result = workdir / "model.onnx"
    if level is not None:
        options = ort.SessionOptions()
        options.graph_optimization_level = LEVELS[level]
        options.optimized_model_filepath = str(result)
        ort.InferenceSession(str(current), options, providers=["CPUExecutionProvider"])
    else:
        result.write_bytes(current.read_bytes())

    signature = onnx_source.inspect(source)
    inputs = generate_inputs(signature, batch=32)
    before, after = _session(source), _session(result)
    names = [o.name for o in before.get_outputs()]
    expected = dict(zip(names, before.run(names, inputs), strict=True))
    actual = dict(zip(names, after.run(names, inputs), strict=True))
    accuracy = compare(expected, actual)
    latency = {}
    for size in (1, 32):
        feeds = _batch(inputs, size)
        b, a = _latency_ms(before, feeds), _latency_ms(after, feeds)
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
        "inputs": "generated from the signature, compared with the source version",
        "batch": 32,
    }
