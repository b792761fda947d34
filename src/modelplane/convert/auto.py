"""Automatic optimization: every way ``optimize.py`` and ``prune.py`` know is tried on the
source model, each candidate's latency measured at batch 1 and 32 and its answers compared with
the source's on the sample inputs; the fastest within the accuracy budget is kept, and the
whole table goes into the new version's report.

The accuracy change is the share of sample rows whose prediction changed: labels, else the
arg-max of scores, else values beyond a small tolerance (a regression's rows). The fastest is
the one with the best geometric mean of its two speedups."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from modelplane.convert import optimize as steps
from modelplane.convert.base import Arrays
from modelplane.convert.prune import Activity, activity, hidden_layers, prune
from modelplane.errors import InvalidInput
from modelplane.protocol.answers import agreement

PRUNE_FRACTIONS = (0.1, 0.25, 0.5)  # without retraining, more rarely keeps the answers
HOLD_OUT_FROM = 200  # with this many sample rows or more, half fit and the other half judge
MEASURE_S = 0.4  # per candidate and batch size
MIN_SPEEDUP = 1.05  # below this a candidate is noise, not faster

Build = Callable[[Path], Path]  # the candidate's file, made in the folder given


def _candidates(source: Path, inputs: Arrays) -> list[tuple[str, Build]]:
    found: list[tuple[str, Build]] = [
        # "extended": "all" may store fusions for this machine's CPU only
        (
            "graph optimization (extended)",
            lambda d: steps.graph_level(source, d / "model.onnx", "extended"),
        ),
        ("int8 dynamic", lambda d: steps.int8_dynamic(source, d / "model.onnx")),
        (
            "int8 static (calibrated)",
            lambda d: steps.int8_static(source, d / "model.onnx", inputs),
        ),
        ("fp16 weights", lambda d: steps.fp16(source, d / "model.onnx")),
    ]
    model = onnx.load(str(source))
    layers = hidden_layers(model)
    if not layers:
        return found
    # the units' activity on the samples, measured once (by the first pruned candidate: a
    # failure there is that candidate's error row) for every fraction
    seen = cache(partial(activity, model, layers, inputs))
    for fraction in PRUNE_FRACTIONS:
        share = f"{fraction:.0%}"
        found.append((f"pruned {share} of hidden units", partial(_pruned, model, fraction, seen)))
        found.append(
            (f"pruned {share} + int8 dynamic", partial(_pruned_int8, model, fraction, seen))
        )
    return found


def _pruned(
    model: onnx.ModelProto, fraction: float, seen: Callable[[], Activity], folder: Path
) -> Path:
    out = folder / "pruned.onnx"
    onnx.save(prune(model, fraction, seen=seen())[0], str(out))
    return out


def _pruned_int8(
    model: onnx.ModelProto, fraction: float, seen: Callable[[], Activity], folder: Path
) -> Path:
    return steps.int8_dynamic(_pruned(model, fraction, seen, folder), folder / "model.onnx")


def _speed(row: dict[str, Any]) -> float:
    return math.sqrt(row["speedup_batch_1"] * row["speedup_batch_32"])


def choose(rows: list[dict[str, Any]], max_drop: float) -> dict[str, Any]:
    """The fastest measured candidate (geometric mean of its two speedups) whose share of
    changed rows is within ``max_drop``; InvalidInput, naming what each one did, when none is
    at least ``MIN_SPEEDUP`` times faster than the source within it."""
    eligible = [
        r for r in rows if "error" not in r and r["accuracy_drop"] <= max_drop
        and _speed(r) >= MIN_SPEEDUP
    ]  # fmt: skip
    if not eligible:
        tried = "; ".join(
            f"{r['name']}: {r['error']}" if "error" in r
            else f"{r['name']}: {_speed(r):.2f}x, {r['accuracy_drop']:.2%} of rows changed"
            for r in rows
        )  # fmt: skip
        faster = [r for r in rows if "error" not in r and _speed(r) >= MIN_SPEEDUP]
        hint = (
            "allow a larger --max-accuracy-drop, or keep the source version"
            if faster
            else "none is faster on this model: keep the source version"
        )
        raise InvalidInput(
            f"no candidate is faster than the source with at most {max_drop:.2%} of the rows' "
            f"predictions changed (tried {tried}); {hint}"
        )
    return max(eligible, key=_speed)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _check(inputs: Arrays) -> None:
    """Samples with rows, and finite: a NaN would pass for "no change" in a regression."""
    if not inputs or not len(next(iter(inputs.values()))):
        raise InvalidInput("the samples have no rows; give some (200 or more, and half of "
                           "them judge the candidates on rows none was fitted to)")  # fmt: skip
    for name, value in inputs.items():
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise InvalidInput(f"the samples' input {name!r} has NaN or infinite values; "
                               "remove those rows")  # fmt: skip


def _split(inputs: Arrays, origin: str) -> tuple[Arrays, Arrays, str]:
    """The rows that calibrate and rank (pruning's unit importance, static int8's ranges), the
    rows that judge, and how the report says so: halves from ``HOLD_OUT_FROM`` rows up, so no
    candidate is judged on what it was fitted to; all of them for both below."""
    rows = len(next(iter(inputs.values()))) if inputs else 0
    if rows < HOLD_OUT_FROM:
        return inputs, inputs, f"{origin} ({rows} rows, too few to hold any out)"
    half = rows // 2
    order = np.random.default_rng(0).permutation(rows)  # samples sorted by class split evenly
    fit = {k: v[order[:half]] for k, v in inputs.items()}
    judge = {k: v[order[half:]] for k, v in inputs.items()}
    return fit, judge, f"{origin} (judged on {rows - half} rows held out from the {half} fitted)"


def optimize_auto(
    source: Path,
    workdir: Path,
    inputs: Arrays,
    origin: str,
    max_drop: float,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Try every candidate on ``inputs`` (described by ``origin`` in the report); the fastest
    whose share of changed rows is at most ``max_drop`` becomes ``workdir/model.onnx``.
    Raises InvalidInput when none is faster than the source within the budget."""
    _check(inputs)
    fit, judge, origin = _split(inputs, origin)
    original = steps.session(source)
    names = [o.name for o in original.get_outputs()]
    try:  # the samples as the model takes them, at both batch sizes measured
        expected = dict(zip(names, original.run(names, judge), strict=True))
        for size in steps.BATCHES:
            original.run(names, steps.batch(judge, size))
    except Exception as exc:  # ONNX Runtime says which input and what is wrong
        raise InvalidInput(
            f"the samples do not fit the model: {_first_line(exc)}; give inputs named, typed "
            "and shaped as the version's signature (modelplane models show NAME:VERSION), "
            "with a batch dimension that takes 1 and 32 rows"
        ) from None
    base = {
        size: steps.latency_ms(original, steps.batch(judge, size), MEASURE_S)
        for size in steps.BATCHES
    }
    rows: list[dict[str, Any]] = []
    files: dict[str, Path] = {}
    candidates = _candidates(source, fit)
    for i, (name, build) in enumerate(candidates):
        progress(f"try {i + 1}/{len(candidates)}")  # a stage: at most 16 characters
        folder = workdir / f"candidate-{i}"
        folder.mkdir()
        row: dict[str, Any] = {"name": name}
        try:
            path = build(folder)
            candidate = steps.session(path)
            actual = dict(zip(names, candidate.run(names, judge), strict=True))
        except Exception as exc:  # a way that does not apply to this model: say why, go on
            row["error"] = _first_line(exc)
            rows.append(row)
            continue
        seen = agreement(expected, actual)
        row["rows_changed"] = seen.disagreeing
        row["accuracy_drop"] = seen.disagreeing / seen.rows if seen.rows else 0.0
        row["max_abs_error"] = seen.max_abs_diff if math.isfinite(seen.max_abs_diff) else None
        for size in steps.BATCHES:
            ms = steps.latency_ms(candidate, steps.batch(judge, size), MEASURE_S)
            row[f"batch_{size}_ms"] = round(ms, 4)
            row[f"speedup_batch_{size}"] = round(base[size] / ms, 2) if ms else 0.0
        row["size"] = path.stat().st_size
        row["within_budget"] = row["accuracy_drop"] <= max_drop
        rows.append(row)
        files[name] = path
    best = choose(rows, max_drop)
    best["chosen"] = True
    result = workdir / "model.onnx"
    shutil.copyfile(files[best["name"]], result)
    rows_count = len(next(iter(judge.values())))
    return {
        "optimization": {
            "auto": True,
            "chosen": best["name"],
            "max_accuracy_drop": max_drop,
            "candidates": rows,
            "latency": {
                f"batch_{size}": {
                    "before_ms": round(base[size], 4),
                    "after_ms": best[f"batch_{size}_ms"],
                    "speedup": best[f"speedup_batch_{size}"],
                }
                for size in steps.BATCHES
            },
            "size_before": source.stat().st_size,
            "size_after": result.stat().st_size,
        },
        "passed": True,
        "outputs": [
            {
                "name": ", ".join(names),
                "rows_changed": best["rows_changed"],
                "rows": rows_count,
                "accuracy_drop": best["accuracy_drop"],
                "max_abs_error": best["max_abs_error"],
                "passed": True,
            }
        ],
        "inputs": origin,
        "batch": rows_count,
    }
