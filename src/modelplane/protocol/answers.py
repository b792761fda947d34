"""Two versions' answers to the same request, compared: how many rows' labels (or values,
beyond tolerance) differ and the largest difference of any value. What a shadow or a rollout's
comparison copies record; it runs off the request's path."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from modelplane.domain.traffic import Agreement
from modelplane.protocol.datatypes import V2_TO_NUMPY

ATOL, RTOL = 1e-4, 1e-3  # a value "differs" beyond this (FP32 conversions agree well within)


def _blob_strings(blob: bytes, count: int) -> np.ndarray:
    items, at = [], 0
    for _ in range(count):
        (length,) = struct.unpack_from("<I", blob, at)
        items.append(blob[at + 4 : at + 4 + length])
        at += 4 + length
    return np.array(items, dtype=object)


def decode_outputs(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """A V2 response's outputs (JSON or binary) as arrays, by name."""
    header = body if header_length is None else body[:header_length]
    doc: dict[str, Any] = orjson.loads(header)
    blobs, at = body[len(header) :], 0
    outputs: dict[str, np.ndarray] = {}
    for out in doc.get("outputs", []):
        shape = [int(d) for d in out["shape"]]
        count = int(np.prod(shape)) if shape else 1
        dtype = V2_TO_NUMPY[out["datatype"]]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            blob = blobs[at : at + int(size)]
            at += int(size)
            if out["datatype"] == "BYTES":
                array = _blob_strings(blob, count)
            else:
                array = np.frombuffer(blob, dtype=dtype.newbyteorder("<"))
        else:
            array = np.asarray(out["data"], dtype=dtype if dtype.kind != "O" else object)
        outputs[out["name"]] = array.reshape(shape)
    return outputs


def _rows(array: np.ndarray, rows: int) -> np.ndarray:
    return array.reshape(rows, -1) if array.size else array.reshape(rows, 0)


def agreement(current: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> Agreement:
    """Label outputs (integers, booleans, strings) are compared as they are; with none, the
    arg-max of each float output of two or more columns is the label; with neither (a
    regression), a row differs where any value differs beyond tolerance. An output missing
    from one side, or shaped otherwise, makes every row differ."""
    names = sorted(current)
    if not names:
        return Agreement()
    rows = int(current[names[0]].shape[0]) if current[names[0]].ndim else 1
    if sorted(candidate) != names or any(candidate[n].shape != current[n].shape for n in names):
        return Agreement(rows, rows, float("inf"))
    differ = np.zeros(rows, dtype=bool)
    largest = 0.0
    labels = [n for n in names if current[n].dtype.kind not in "fc"]
    floats = [n for n in names if current[n].dtype.kind in "fc"]
    for name in floats:
        a = _rows(current[name].astype(np.float64), rows)
        b = _rows(candidate[name].astype(np.float64), rows)
        if a.size:  # a value gone NaN or infinite where it was finite: that row changed
            differ |= (np.isfinite(a) & ~np.isfinite(b)).any(axis=1)
            both = np.isfinite(a) & np.isfinite(b)
            if both.any():
                largest = max(largest, float(np.abs(a - b)[both].max()))
    for name in labels:
        differ |= (_rows(current[name], rows) != _rows(candidate[name], rows)).any(axis=1)
    if not labels:
        scores = [n for n in floats if current[n].ndim >= 2 and current[n].shape[-1] >= 2]
        for name in scores:
            a = _rows(np.argmax(current[name], axis=-1), rows)
            b = _rows(np.argmax(candidate[name], axis=-1), rows)
            differ |= (a != b).any(axis=1)
        if not scores:
            for name in floats:
                a = _rows(current[name].astype(np.float64), rows)
                b = _rows(candidate[name].astype(np.float64), rows)
                differ |= (np.abs(a - b) > ATOL + RTOL * np.abs(a)).any(axis=1)
    return Agreement(rows, int(differ.sum()), largest)
