"""Conversion benchmark: time to convert and verify each source format (in the isolated worker,
as a push does), and the speed and accuracy of each optimization of the MLP (trained, so that
the accuracy change means something), by hand and with ``optimize --auto``.

    .venv/bin/python bench/convert.py [--smoke] [--results DIR]

Writes bench/results/convert-<time>.json and .md and prints the table. ``--smoke`` runs the same
path on two tiny models and one optimization: it checks the benchmark works, measures nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from modelplane.convert.archive import UnpackLimits
from modelplane.convert.runner import ConversionRunner, ConversionSpec
from modelplane.testing import trained_mlp
from report import add_results_option, save

FULL_MLP = (256, 1024, 1024, 1024, 10)
SMOKE_MLP = (32, 512, 512, 4)  # big enough that pruning is measurably faster
OPTIMIZATIONS = ((None, "all"), ("int8", None), ("int8", "all"), ("fp16", None))


def build_models(folder: Path, smoke: bool) -> dict[str, tuple[Path, str, dict[str, Any]]]:
    """One model per format, made in code: name -> (file, worker format, spec extras); tiny
    ones for a smoke run."""
    import joblib
    import torch
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    models: dict[str, tuple[Path, str, dict[str, Any]]] = {}
    x, y = load_iris(return_X_y=True)
    trees = 3 if smoke else 50
    pipe = make_pipeline(StandardScaler(), RandomForestClassifier(trees, random_state=0))
    joblib.dump(pipe.fit(x, y), folder / "pipe.joblib")
    models["scikit-learn pipeline (scaler + RF)"] = (
        folder / "pipe.joblib", "sklearn", {"trust_pickle": True})  # fmt: skip

    features, hidden = (16, 32) if smoke else (256, 1024)
    mlp = torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, 10)).eval()  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(mlp), folder / "mlp.pt")
    models["torch MLP (TorchScript)"] = (
        folder / "mlp.pt",
        "torchscript",
        {"input_shape": (1, features)},
    )
    if smoke:  # the other two only add imports and exports: the path is the same
        return models

    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(16, 10),
    ).eval()  # fmt: skip
    batch = torch.export.Dim("batch")
    program = torch.export.export(cnn, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(program, folder / "cnn.pt2")
    models["torch CNN (torch.export)"] = (folder / "cnn.pt2", "torch-export", {})

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    km = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10, activation="relu"),
                           keras.layers.Dense(1)])  # fmt: skip
    km.compile(optimizer="adam", loss="mse")
    km.fit(np.random.rand(64, 8), np.random.rand(64, 1), epochs=1, verbose=0)
    km.save(folder / "model.keras")
    models["Keras tutorial model (.keras)"] = (folder / "model.keras", "keras", {})
    return models


async def run(smoke: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as work:
        return await measure(Path(work), smoke)


async def measure(work: Path, smoke: bool) -> dict[str, Any]:
    runner = ConversionRunner(
        timeout_s=900, memory_limit_bytes=8 << 30, cpu_limit_s=0, unpack=UnpackLimits(8 << 30)
    )
    rows = []
    for name, (path, fmt, extra) in build_models(work, smoke).items():
        started = time.perf_counter()
        result = await runner.run(ConversionSpec(path, fmt, work / f"job-{fmt}", **extra))
        wall = time.perf_counter() - started
        worst = max((o.get("max_abs_error", 0.0) for o in result.report["outputs"]), default=0.0)
        rows.append({"model": name, "format": fmt, "total_s": round(wall, 2),
                     "convert_s": result.report["convert_seconds"],
                     "parity": "passed" if result.report["passed"] else "FAILED",
                     "max_abs_error": worst})  # fmt: skip
        print(f"  {name:<38} {wall:6.2f}s  parity {rows[-1]['parity']}  max abs {worst:.2e}",
              flush=True)  # fmt: skip
    source, samples = work / "mlp.onnx", work / "samples.npz"
    sizes = SMOKE_MLP if smoke else FULL_MLP
    model, rows_in = trained_mlp(sizes, rows=256 if smoke else 4096, epochs=1 if smoke else 4)
    source.write_bytes(model)
    np.savez(samples, x=rows_in)
    optimizations = []
    for quantize, level in OPTIMIZATIONS[2:3] if smoke else OPTIMIZATIONS:
        spec = ConversionSpec(source, "optimize", work / f"opt-{quantize}-{level}",
                              quantize=quantize, level=level)  # fmt: skip
        result = await runner.run(spec)
        opt = result.report["optimization"]
        optimizations.append({
            "quantize": quantize, "level": level,
            "speedup_batch_1": opt["latency"]["batch_1"]["speedup"],
            "speedup_batch_32": opt["latency"]["batch_32"]["speedup"],
            "size_ratio": round(opt["size_after"] / opt["size_before"], 2),
            "max_abs_error": result.report["outputs"][0].get("max_abs_error"),
        })  # fmt: skip
        print(f"  optimize quantize={quantize} level={level}: {optimizations[-1]}", flush=True)
    spec = ConversionSpec(source, "optimize", work / "opt-auto", samples=samples, auto=0.005)
    started = time.perf_counter()
    auto = (await runner.run(spec)).report["optimization"]
    print(f"  optimize --auto: kept {auto['chosen']} in {time.perf_counter() - started:.1f}s",
          flush=True)  # fmt: skip
    candidates = [
        {k: c.get(k) for k in ("name", "speedup_batch_1", "speedup_batch_32", "accuracy_drop",
                                "error", "chosen")}
        | {"size_ratio": round(c["size"] / auto["size_before"], 2) if "size" in c else None}
        for c in auto["candidates"]
    ]  # fmt: skip
    return {"conversions": rows, "mlp": list(sizes), "optimizations": optimizations,
            "auto": {"chosen": auto["chosen"], "max_accuracy_drop": auto["max_accuracy_drop"],
                     "candidates": candidates}}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| model | format | convert + verify (s) | of which convert (s) | parity | max abs error |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["conversions"]:
        lines.append(f"| {r['model']} | {r['format']} | {r['total_s']:.2f} | {r['convert_s']:.2f}"
                     f" | {r['parity']} | {r['max_abs_error']:.1e} |")  # fmt: skip
    mlp = "-".join(map(str, result["mlp"]))
    lines += ["", f"| MLP {mlp} optimization | speedup batch 1 | speedup batch 32 "
              "| size | max abs error vs source |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for o in result["optimizations"]:
        what = ", ".join(p for p in (o["quantize"], o["level"] and f"level {o['level']}") if p)
        lines.append(f"| {what} | {o['speedup_batch_1']:.2f}x | {o['speedup_batch_32']:.2f}x | "
                     f"{o['size_ratio']:.2f}x | {o['max_abs_error']:.1e} |")  # fmt: skip
    auto = result["auto"]
    lines += ["", f"| optimize --auto (at most {auto['max_accuracy_drop']:.1%} changed) | speedup "
              "batch 1 | speedup batch 32 | size | predictions changed | |",
              "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for c in auto["candidates"]:
        if c["error"]:
            lines.append(f"| {c['name']} | | | | | not applicable: {c['error']} |")
            continue
        kept = "**kept**" if c["chosen"] else ""
        lines.append(f"| {c['name']} | {c['speedup_batch_1']:.2f}x | "
                     f"{c['speedup_batch_32']:.2f}x | {c['size_ratio']:.2f}x | "
                     f"{c['accuracy_drop']:.2%} | {kept} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models: check it runs")
    add_results_option(parser)
    args = parser.parse_args()
    result = asyncio.run(run(args.smoke))
    save("convert", result, markdown(result), args.results)


if __name__ == "__main__":
    main()
