"""ONNX as a source format: validate the file and read its tensor signature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from modelplane.domain import Signature, TensorSpec
from modelplane.domain.signature import TEXT_INPUT, TOKENIZER_METADATA
from modelplane.errors import UnsupportedModel

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


def _check_no_external_data(model: Any) -> None:
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise UnsupportedModel(
                f"tensor {tensor.name!r} refers to external data files; push the folder that "
                "holds the .onnx file and its data files (modelplane push FOLDER --name ...)"
            )


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
        raise UnsupportedModel(f"the ONNX model failed validation: {str(exc)[:300]}") from exc
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
    return Signature(inputs, outputs)
