"""ONNX as a source format: validate the file and read its tensor signature."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from modelplane.domain import Signature, TensorSpec
from modelplane.domain.processing import Processing, ProcessingError
from modelplane.domain.signature import TEXT_INPUT, TOKENIZER_METADATA
from modelplane.errors import UnsupportedModel, redact_paths
from modelplane.runtime.media import PROCESSING_METADATA, served_signature

# onnx.TensorProto element type -> V2 datatype
ONNX_TO_V2: dict[int, str] = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "BYTES",
}


def _tensor_spec(value: Any, kind: str) -> TensorSpec:
    type_ = value.type
    if not type_.HasField("tensor_type"):
        which = type_.WhichOneof("value") or "unknown"
        hint = (
            " (scikit-learn classifiers converted with skl2onnx: pass options={'zipmap': False})"
            if which in {"sequence_type", "map_type"}
            else ""
        )
        raise UnsupportedModel(
            f"{kind} {value.name!r} is a {which.removesuffix('_type')}, not a tensor; "
            f"modelplane serves tensor inputs and outputs only{hint}"
        )
    elem = type_.tensor_type.elem_type
    datatype = ONNX_TO_V2.get(elem)
    if datatype is None:
        name = onnx.TensorProto.DataType.Name(elem)
        raise UnsupportedModel(f"{kind} {value.name!r} has element type {name}, not supported")
    dims: list[int] = []
    if type_.tensor_type.HasField("shape"):
        for dim in type_.tensor_type.shape.dim:
            dims.append(dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else -1)
    return TensorSpec(value.name, datatype, tuple(dims))


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any) -> Iterator[Any]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sparse in (
                *([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []),
                *attribute.sparse_tensors,
            ):
                yield from (sparse.values, sparse.indices)
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for graph in attribute.graphs:
                yield from _graph_tensors(graph)


def all_tensors(model: Any) -> Iterator[Any]:
    """Every tensor that can hold data in a model: initializers, sparse initializers (values and
    indices), tensor and sparse-tensor attributes (``Constant`` included), in the main graph, in
    every subgraph (If, Loop, Scan), in local functions and in training graphs."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)
    for training in model.training_info:
        yield from _graph_tensors(training.initialization)
        yield from _graph_tensors(training.algorithm)


def is_external(tensor: Any) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _check_no_external_data(model: Any) -> None:
    """A single file has no folder for its data files: any reference to one is refused (never
    resolved against wherever the server happens to run)."""
    for tensor in all_tensors(model):
        if is_external(tensor):
            raise UnsupportedModel(
                f"tensor {tensor.name!r} refers to external data files; push the folder that "
                "holds the .onnx file and its data files (modelplane push FOLDER --name ...)"
            )


def load_session(model: Path) -> Any:
    """An ONNX Runtime session (CPU) of the file, or UnsupportedModel saying why it cannot load
    (with no server path in it)."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model.read_bytes(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UnsupportedModel(
            "ONNX Runtime cannot load this model (an opset or operator it does not know?): "
            f"{redact_paths(str(exc))[:500]}"
        ) from None


def inspect(path: Path) -> Signature:
    """Validate an ONNX file and return its signature; raises UnsupportedModel if unusable."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UnsupportedModel(
            "the file is not a valid ONNX model (it could not be parsed as an ONNX protobuf)"
        ) from exc
    _check_no_external_data(model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        reason = redact_paths(str(exc))[:300]
        raise UnsupportedModel(f"the ONNX model failed validation: {reason}") from exc
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(
        _tensor_spec(v, "input") for v in model.graph.input if v.name not in initializers
    )
    outputs = tuple(_tensor_spec(v, "output") for v in model.graph.output)
    if any(p.key == TOKENIZER_METADATA for p in model.metadata_props):
        # the replica tokenizes: clients send strings
        inputs = (TensorSpec(TEXT_INPUT, "BYTES", (-1,)),)
    if not inputs or not outputs:
        raise UnsupportedModel("the ONNX model has no inputs or no outputs")
    declared = next((p.value for p in model.metadata_props if p.key == PROCESSING_METADATA), None)
    if declared is not None:  # files in, top-k labels out
        try:
            processing = Processing.from_dict(json.loads(declared))
        except (ProcessingError, json.JSONDecodeError) as exc:
            raise UnsupportedModel(f"the file's {PROCESSING_METADATA} metadata: {exc}") from None
        return served_signature(processing, Signature(inputs, outputs))
    return Signature(inputs, outputs)
