"""Inputs far outside what a model was built for.

``input_stats`` summarises sample inputs (those given with ``push --samples``): per numeric
input its min, max, mean and std, per feature where the input is 2-D (``[batch, features]``,
up to ``MAX_FEATURES``), else over all its values. The statistics are kept with the version.

``InputGuard`` is the replica's check: a value more than ``sigmas`` standard deviations beyond
the range the samples spanned makes the request an outlier. The check is a few vectorized
comparisons per input against bounds computed once; the details are worked out only for an
outlier. What happens then is the deployment's ``input_guard``: ``log``, ``flag`` (a response
header) or ``reject`` (422).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelplane.errors import InvalidInput, ModelplaneError

MAX_FEATURES = 256
JSON_MAX_BYTES = 16 << 20  # JSON samples: parsed in the server, larger ones go as .npz
JSON_MAX_ARRAYS = 1 << 20  # lists and objects in JSON samples (each costs a Python object)
ACTIONS = ("off", "log", "flag", "reject")
HEADER = "modelplane-input-outlier"


class InputOutlier(ModelplaneError):
    status = 422
    code = "input_outlier"


def input_stats(inputs: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per numeric input: ``{"per_feature": bool, "min": [...], "max": [...], "mean": [...],
    "std": [...], "count": rows}`` (lists of one value when not per feature)."""
    stats: dict[str, dict[str, Any]] = {}
    for name, array in inputs.items():
        if array.dtype.kind not in "iuf" or array.size == 0:
            continue
        values = array.astype(np.float64)
        per_feature = values.ndim == 2 and values.shape[1] <= MAX_FEATURES
        flat = values if per_feature else values.reshape(-1, 1)
        finite = np.where(np.isfinite(flat), flat, np.nan)
        stats[name] = {
            "per_feature": per_feature,
            "count": int(flat.shape[0]),
            **{
                key: [round(float(v), 6) for v in fn(finite, axis=0)]
                for key, fn in (
                    ("min", np.nanmin),
                    ("max", np.nanmax),
                    ("mean", np.nanmean),
                    ("std", np.nanstd),
                )
            },
        }
    return stats


def load_samples(data: bytes, max_unpacked: int) -> dict[str, np.ndarray]:
    """Sample inputs as pushed (.npz, or JSON ``{name: [[...]]}``), never unpacking more than
    ``max_unpacked`` bytes, never unpickling, and parsing JSON only within ``JSON_MAX_BYTES``
    and ``JSON_MAX_ARRAYS``."""
    if data[:2] == b"PK":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                if sum(info.file_size for info in archive.infolist()) > max_unpacked:
                    raise InvalidInput(f"the samples unpack to more than {max_unpacked} bytes")
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise InvalidInput(f"samples are not a valid .npz file: {exc}") from None
    if len(data) > JSON_MAX_BYTES or data.count(b"[") + data.count(b"{") > JSON_MAX_ARRAYS:
        raise InvalidInput(
            f"JSON samples are limited to {JSON_MAX_BYTES >> 20} MiB and {JSON_MAX_ARRAYS} "
            "arrays; send larger samples as .npz (numpy.savez)"
        )
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInput(f"samples must be .npz or JSON {{name: [[...]]}}: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput('samples JSON must be an object: {"input_name": [[...]], ...}')
    try:
        return {k: np.asarray(v) for k, v in doc.items()}
    except ValueError as exc:
        raise InvalidInput(f"samples JSON holds a ragged array: {exc}") from None


@dataclass(frozen=True, slots=True)
class Outlier:
    input: str
    feature: int | None
    value: float
    sigmas: float  # how far beyond the samples' range, in their standard deviations
    low: float
    high: float

    def message(self) -> str:
        where = f"input {self.input!r}" + (
            f" feature {self.feature}" if self.feature is not None else ""
        )
        side = "above the largest" if self.value > self.high else "below the smallest"
        return (
            f"{where}: {self.value:g} is {self.sigmas:.1f} standard deviations {side} value in "
            f"the samples this model version was pushed with (range {self.low:g} to "
            f"{self.high:g})"
        )


@dataclass(frozen=True, slots=True)
class _Bounds:
    low: np.ndarray  # min - sigmas * scale, one per feature (or one)
    high: np.ndarray
    min: np.ndarray
    max: np.ndarray
    scale: np.ndarray
    per_feature: bool


class InputGuard:
    def __init__(self, stats: Mapping[str, Mapping[str, Any]], sigmas: float) -> None:
        self._bounds: dict[str, _Bounds] = {}
        for name, s in stats.items():
            lo, hi = np.asarray(s["min"], np.float64), np.asarray(s["max"], np.float64)
            mean, std = np.asarray(s["mean"], np.float64), np.asarray(s["std"], np.float64)
            # a constant feature: judged against its magnitude (or 1) instead of a zero std
            scale = np.where(std > 0, std, np.maximum(np.abs(mean), 1.0))
            per_feature = bool(s.get("per_feature"))
            self._bounds[name] = _Bounds(lo - sigmas * scale, hi + sigmas * scale, lo, hi,
                                         scale, per_feature)  # fmt: skip

    def check(self, inputs: Mapping[str, np.ndarray]) -> Outlier | None:
        """The first outlying value of the request, or None."""
        for name, b in self._bounds.items():
            x = inputs.get(name)
            if x is None or x.dtype.kind not in "iuf" or x.size == 0:
                continue
            if b.per_feature:
                if x.ndim != 2 or x.shape[1] != b.low.shape[0]:
                    continue
            else:
                x = x.reshape(-1, 1)
            out = (x < b.low) | (x > b.high)
            if out.any():
                return _describe(name, x, out, b)
        return None


def _describe(name: str, x: np.ndarray, out: np.ndarray, b: _Bounds) -> Outlier:
    row, col = (int(i) for i in np.argwhere(out)[0])
    value = float(x[row, col])
    low, high, scale = float(b.min[col]), float(b.max[col]), float(b.scale[col])
    beyond = value - high if value > high else low - value
    return Outlier(name, col if b.per_feature else None, value, beyond / scale, low, high)


def guard_from(stats: Mapping[str, Any] | None, action: str, sigmas: float) -> InputGuard | None:
    """The replica's guard: None (no work at all) when off or the version has no statistics."""
    if action == "off" or not stats:
        return None
    return InputGuard(stats, sigmas)
