"""ONNX Runtime as a Runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from modelplane.domain import Signature, TensorSpec
from modelplane.errors import InvalidInput, UnsupportedModel

ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(arg: Any) -> TensorSpec:
    datatype = ORT_TO_V2.get(arg.type)
    if datatype is None:
        raise UnsupportedModel(f"tensor {arg.name!r} has type {arg.type}, which is not supported")
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


class OnnxRuntime:
    """Runs one ONNX model (a file, or its bytes: a replica's decrypted artifact) on the CPU
    execution provider. Bytes are let go of once loaded."""

    def __init__(self, model: Path | bytes, intra_op_threads: int = 1) -> None:
        self._model: Path | bytes | None = model
        self._threads = intra_op_threads
        self._session: ort.InferenceSession | None = None
        # one inference at a time per replica: ONNX Runtime's own threads do the parallel work
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.signature = Signature((), ())
        self.metadata: dict[str, str] = {}

    def load(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._model is None:
            raise RuntimeError("load() once only: the model's bytes were let go of")
        model = self._model if isinstance(self._model, bytes) else str(self._model)
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        if isinstance(self._model, bytes):
            self._model = None
        self.signature = Signature(
            tuple(_spec(a) for a in self._session.get_inputs()),
            tuple(_spec(a) for a in self._session.get_outputs()),
        )
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)

    async def predict(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run, inputs, outputs)

    def run(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run synchronously (in the caller's thread)."""
        if self._session is None:
            raise RuntimeError("predict() before load()")
        try:
            results = self._session.run(list(outputs), dict(inputs))
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as exc:
            # the model rejected values the signature allowed (e.g. inconsistent dims)
            raise InvalidInput(f"the model could not run on this input: {_short(exc)}") from None
        return {name: np.asarray(r) for name, r in zip(outputs, results, strict=True)}


def _short(exc: Exception) -> str:
    text = str(exc)
    if text.startswith("[ONNXRuntimeError]"):
        text = text.rsplit(" : ", 1)[-1]
    return text.strip()[:300]
