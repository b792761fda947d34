"""Helpers for users' own tests (and ours): small models built in code, free ports, polling."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Sequence

import onnx
from onnx import TensorProto, helper

from modelplane.convert.onnx import ONNX_TO_V2
from modelplane.demo import iris_onnx, train_iris

__all__ = [
    "free_port",
    "identity_onnx",
    "iris_onnx",
    "mlp_onnx",
    "multi_identity_onnx",
    "train_iris",
    "wait_for",
]

V2_TO_ONNX = {v2: elem for elem, v2 in ONNX_TO_V2.items()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1) -> None:
    """Poll ``check`` until it returns True; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout:g}s")


def identity_onnx(datatype: str, shape: Sequence[int | None] = (None, 2)) -> bytes:
    """A one-node ONNX model whose output ``y`` equals its input ``x`` (any V2 datatype)."""
    return multi_identity_onnx({"x": datatype}, shape, {"x": "y"})


def multi_identity_onnx(
    inputs: dict[str, str],
    shape: Sequence[int | None] = (None, 2),
    names: dict[str, str] | None = None,
) -> bytes:
    """An ONNX model passing each input (name -> V2 datatype) to an output of the same type,
    named ``names[input]`` or ``<input>_out``."""
    names = names or {}
    nodes, graph_inputs, graph_outputs = [], [], []
    for name, datatype in inputs.items():
        out = names.get(name, f"{name}_out")
        elem = V2_TO_ONNX[datatype]
        graph_inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        graph_outputs.append(helper.make_tensor_value_info(out, elem, list(shape)))
        nodes.append(helper.make_node("Identity", [name], [out]))
    graph = helper.make_graph(nodes, "identity", graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def mlp_onnx(sizes: Sequence[int] = (256, 1024, 1024, 1024, 10), seed: int = 0) -> bytes:
    """A fully connected FP32 network (MatMul, Add, Relu) with random weights: input ``x``
    [N, sizes[0]], output ``y`` [N, sizes[-1]]."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    current = "x"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = np.zeros(fan_out, dtype=np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, sizes[-1]])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
