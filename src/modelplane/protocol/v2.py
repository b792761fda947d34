"""KServe V2 / Open Inference Protocol: request decoding with validation against a signature,
and response encoding, for JSON and the binary tensor data extension."""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np
import orjson

from modelplane.domain import Signature, TensorSpec
from modelplane.domain.signature import FILE_TASKS, TEXT_INPUT, TOKEN_COUNT
from modelplane.errors import InvalidInput
from modelplane.protocol.datatypes import V2_TO_NUMPY, v2_datatype

EXTENSIONS = ["binary_tensor_data", "statistics"]
HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None


@dataclass(slots=True)
class InferenceRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    max_elements: int = 1 << 28


def _fail(message: str) -> InvalidInput:
    return InvalidInput(message)


def _shape(spec: TensorSpec, raw: Any, limits: Limits) -> tuple[int, ...]:
    name = spec.name
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in raw
    ):
        raise _fail(f"input {name!r}: 'shape' must be a list of integers, got {raw!r}")
    if any(d < 0 for d in raw):
        raise _fail(f"input {name!r}: shape {raw} has a negative dimension")
    if len(raw) != len(spec.shape):
        raise _fail(
            f"input {name!r}: expected a shape of rank {len(spec.shape)} like "
            f"{list(spec.shape)} (-1 = any size), got {raw}"
        )
    for want, got in zip(spec.shape, raw, strict=True):
        if want != -1 and want != got:
            raise _fail(f"input {name!r}: expected shape {list(spec.shape)}, got {raw}")
    if prod(raw) > limits.max_elements:
        raise _fail(
            f"input {name!r}: shape {raw} has {prod(raw)} elements, over the limit of "
            f"{limits.max_elements}"
        )
    return tuple(raw)


def _decode_bytes_elements(blob: memoryview, count: int, name: str, text: bool) -> np.ndarray:
    out = np.empty(count, dtype=np.object_)
    offset = 0
    for i in range(count):
        if offset + 4 > len(blob):
            raise _fail(f"input {name!r}: binary BYTES data ends before element {i}")
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + length > len(blob):
            raise _fail(f"input {name!r}: binary BYTES element {i} runs past the data")
        if not text:  # files (images, audio): the bytes as they are
            out[i] = bytes(blob[offset : offset + length])
            offset += length
            continue
        try:  # ONNX Runtime's string tensors take text: bytes that are not UTF-8 are refused
            out[i] = bytes(blob[offset : offset + length]).decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(
                f"input {name!r}: BYTES element {i} is not UTF-8 text, which ONNX Runtime's "
                "string tensors require"
            ) from None
        offset += length
    if offset != len(blob):
        raise _fail(f"input {name!r}: binary BYTES data has {len(blob) - offset} extra bytes")
    return out


def _from_binary(
    spec: TensorSpec, shape: tuple[int, ...], blob: memoryview, files: bool = False
) -> np.ndarray:
    count = prod(shape)
    if spec.datatype == "BYTES":
        return _decode_bytes_elements(blob, count, spec.name, not files).reshape(shape)
    dtype = V2_TO_NUMPY[spec.datatype]
    expected = count * dtype.itemsize
    if len(blob) != expected:
        raise _fail(
            f"input {spec.name!r}: shape {list(shape)} of {spec.datatype} needs {expected} bytes, "
            f"got {len(blob)}"
        )
    return (
        np.frombuffer(blob, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    )


def _files_from_json(name: str, flat: np.ndarray) -> np.ndarray:
    """Files (images, audio) in JSON travel base64-encoded: one string per file."""
    out = np.empty(flat.size, dtype=np.object_)
    for i, item in enumerate(flat):
        try:
            out[i] = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise _fail(
                f"input {name!r}: element {i} is not base64; in JSON send each file "
                "base64-encoded, or send the bytes with the binary extension"
            ) from None
    return out


def _from_json(
    spec: TensorSpec, shape: tuple[int, ...], data: Any, files: bool = False
) -> np.ndarray:
    name = spec.name
    if not isinstance(data, list):
        data = [data]
    count = prod(shape)
    if spec.datatype == "BYTES":
        flat = np.asarray(data, dtype=np.object_).ravel()
        if flat.size != count:
            raise _fail(
                f"input {name!r}: shape {list(shape)} needs {count} elements, got {flat.size}"
            )
        if not all(isinstance(x, str) for x in flat):
            raise _fail(f"input {name!r}: BYTES data must be strings")
        return (_files_from_json(name, flat) if files else flat).reshape(shape)
    dtype = V2_TO_NUMPY[spec.datatype]
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _fail(
            f"input {name!r}: data is not a rectangular array of {spec.datatype} values ({exc})"
        ) from None
    if dtype.kind != "b" and _has_bools(data):
        raise _fail(f"input {name!r}: data holds booleans but the datatype is {spec.datatype}")
    if array.size != count:
        raise _fail(f"input {name!r}: shape {list(shape)} needs {count} elements, got {array.size}")
    return array.reshape(shape)


def _has_bools(data: list[Any]) -> bool:
    first = data
    while isinstance(first, list) and first:
        first = first[0]
    return isinstance(first, bool)


def _parse_header(header: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _fail('the request must be a JSON object like {"inputs": [...]}')
    return doc


def _raw_request(body: bytes, signature: Signature, limits: Limits) -> InferenceRequest:
    if len(signature.inputs) != 1:
        raise _fail(
            "a raw binary body (Inference-Header-Content-Length: 0) needs a model with one input; "
            f"this model has {len(signature.inputs)}"
        )
    spec = signature.inputs[0]
    if signature.task in FILE_TASKS:  # the body is the file itself
        single = np.empty(1, dtype=np.object_)
        single[0] = bytes(body)
        return InferenceRequest(inputs={spec.name: single}, binary_output=True)
    if spec.datatype == "BYTES":
        shape = tuple(1 if d == -1 else d for d in spec.shape)
    else:
        itemsize = V2_TO_NUMPY[spec.datatype].itemsize
        fixed = prod(d for d in spec.shape if d != -1)
        dynamic = [i for i, d in enumerate(spec.shape) if d == -1]
        if len(dynamic) > 1 or len(body) % (itemsize * max(fixed, 1)):
            raise _fail(
                f"a raw binary body must hold whole {spec.datatype} tensors of shape "
                f"{list(spec.shape)}; got {len(body)} bytes"
            )
        free = len(body) // (itemsize * max(fixed, 1))
        shape = tuple(free if d == -1 else d for d in spec.shape)
    shape = _shape(spec, list(shape), limits)
    array = _from_binary(spec, shape, memoryview(body))
    return InferenceRequest(inputs={spec.name: array}, binary_output=True)


def decode_request(
    body: bytes, header_length: int | None, signature: Signature, limits: Limits
) -> InferenceRequest:
    """Parse and validate a V2 request; raises InvalidInput with a message a user can act on."""
    if header_length == 0:
        return _raw_request(body, signature, limits)
    if header_length is not None and not 0 < header_length <= len(body):
        raise _fail(
            f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
        )
    end = header_length if header_length is not None else len(body)
    doc = _parse_header(body[:end])
    binary = memoryview(body)[end:]

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _fail("'inputs' must be a non-empty list of tensors")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise _fail("'parameters' must be an object")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    files = signature.task in FILE_TASKS
    for item in raw_inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _fail("each input must be an object with 'name', 'shape', 'datatype' and 'data'")
        name = item["name"]
        spec = signature.input(name)
        if spec is None:
            expected = ", ".join(t.name for t in signature.inputs)
            raise _fail(f"unknown input {name!r}; this model's inputs are: {expected}")
        if name in inputs:
            raise _fail(f"input {name!r} is given twice")
        datatype = item.get("datatype")
        if datatype != spec.datatype:
            raise _fail(f"input {name!r}: expected datatype {spec.datatype}, got {datatype!r}")
        shape = _shape(spec, item.get("shape"), limits)
        item_params = item.get("parameters") or {}
        size = item_params.get("binary_data_size") if isinstance(item_params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise _fail(
                    f"input {name!r}: binary_data_size {size!r} does not fit the "
                    f"{len(binary) - offset} binary bytes left in the body"
                )
            inputs[name] = _from_binary(spec, shape, binary[offset : offset + size], files)
            offset += size
        elif "data" in item:
            inputs[name] = _from_json(spec, shape, item["data"], files)
        else:
            raise _fail(f"input {name!r} has no 'data' and no binary_data_size parameter")
    if offset != len(binary):
        raise _fail(f"the body has {len(binary) - offset} binary bytes that no input claims")
    missing = [t.name for t in signature.inputs if t.name not in inputs]
    if missing:
        raise _fail(f"missing input(s): {', '.join(missing)}")
    return InferenceRequest(
        inputs=inputs,
        id=_request_id(doc.get("id")),
        parameters=params,
        outputs=_requested_outputs(doc.get("outputs"), signature),
        binary_output=bool(params.get("binary_data_output", False)),
    )


def _request_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail("'id' must be a string")
    return value


def _requested_outputs(raw: Any, signature: Signature) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _fail("'outputs' must be a list of {\"name\": ...} objects")
    result = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _fail("each requested output must be an object with a 'name'")
        # a text model also gives token_count when asked (runtime/text.py)
        extra = item["name"] == TOKEN_COUNT and signature.input(TEXT_INPUT) is not None
        if signature.output(item["name"]) is None and not extra:
            known = ", ".join(t.name for t in signature.outputs)
            raise _fail(f"unknown output {item['name']!r}; this model's outputs are: {known}")
        params = item.get("parameters") or {}
        binary = params.get("binary_data") if isinstance(params, dict) else None
        result.append(RequestedOutput(item["name"], None if binary is None else bool(binary)))
    return result


def output_names(request: InferenceRequest, signature: Signature) -> list[str]:
    if request.outputs is None:
        return [t.name for t in signature.outputs]
    return [o.name for o in request.outputs]


def _bytes_blob(array: np.ndarray) -> bytes:
    parts = []
    for item in array.ravel():
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8", "surrogateescape")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _json_data(array: np.ndarray) -> Any:
    """Flat data for JSON. Numeric arrays go to orjson as numpy (fast, and FP32 prints as the
    shortest FP32 text: 0.1, not 0.10000000149011612)."""
    if array.dtype.kind in ("O", "U", "S"):
        return [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.ravel()
        ]
    return np.ascontiguousarray(array.ravel())


def encode_response(
    model_name: str,
    model_version: str,
    request: InferenceRequest,
    results: Mapping[str, np.ndarray],
    order: Sequence[str],
) -> tuple[bytes, int | None]:
    """Encode a response; returns the body and the JSON header length when blobs follow."""
    binary_for = {o.name: o.binary for o in request.outputs or []}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in order:
        array = results[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(array),
            "shape": list(array.shape),
        }
        binary = binary_for.get(name)
        if binary if binary is not None else request.binary_output:
            blob = (
                _bytes_blob(array)
                if entry["datatype"] == "BYTES"
                else np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(array)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def error_body(message: str, code: str) -> bytes:
    """The one error shape, everywhere: ``{"error": message, "code": code}``."""
    return orjson.dumps({"error": message, "code": code})
