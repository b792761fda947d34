"""Helpers for users' own tests (and ours): small models built in code, free ports, polling."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence

import onnx
from onnx import TensorProto, helper

from modelplane.demo import iris_onnx, train_iris

__all__ = ["free_port", "identity_onnx", "iris_onnx", "train_iris", "wait_for"]

V2_TO_ONNX = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


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
    elem = V2_TO_ONNX[datatype]
    x = helper.make_tensor_value_info("x", elem, list(shape))
    y = helper.make_tensor_value_info("y", elem, list(shape))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
