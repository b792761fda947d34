"""The conversion worker: one isolated process per conversion (``python -m
modelplane.convert.worker SPEC``). It never sees the platform's keys, database or settings; the
parent gives it a scratch folder, a time limit, a memory limit and a CPU-time limit, and it exits
by itself if the parent dies (taking its own process group with it).

Progress goes to stdout as JSON lines (``{"stage": ...}``); the result to ``report.json`` or
``error.json`` in the scratch folder; the traceback of an unexpected error to stderr.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from modelplane.convert.archive import UnpackLimits
from modelplane.convert.base import Arrays, Converter, ConvertOptions
from modelplane.convert.extras import extra_for_module
from modelplane.errors import InvalidInput, ModelplaneError, UnsupportedModel
from modelplane.watchdog import watch_parent

LOAD = "load"  # the operation that only checks ONNX Runtime can load an ONNX file

# source format -> (module in modelplane.convert, function); imported only when used, so a
# worker converting a scikit-learn pipeline never imports torch or TensorFlow
CONVERTERS = {
    "sklearn": ("sklearn_source", "convert"),
    "torchscript": ("torch_source", "convert_torchscript"),
    "torch-export": ("torch_source", "convert_export"),
    "keras": ("keras_source", "convert"),
    "keras-h5": ("keras_source", "convert"),
    "tensorflow": ("tensorflow_source", "convert"),
    "onnx-folder": ("onnx_external", "convert"),
    "transformers": ("transformers_source", "convert"),
}


def _converter(source_format: str) -> Converter:
    found = CONVERTERS.get(source_format)
    if found is None:
        raise UnsupportedModel(f"converting {source_format} models is not supported yet")
    module, function = found
    converter: Converter = getattr(
        importlib.import_module(f"modelplane.convert.{module}"), function
    )
    return converter


def _load_samples(path: Path) -> Arrays:
    if path.read_bytes()[:2] == b"PK":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"samples must be .npz or JSON {{name: [[...]]}}: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput('samples JSON must be an object: {"input_name": [[...]], ...}')
    return {k: np.asarray(v) for k, v in doc.items()}


def _emit(stage: str, **fields: Any) -> None:
    print(json.dumps({"stage": stage, **fields}), flush=True)


def _load(source: Path) -> dict[str, Any]:
    """Load the model in ONNX Runtime (from bytes: it has no folder to resolve anything in)."""
    from modelplane.convert.onnx import load_session

    _emit(LOAD)
    load_session(source)
    return {"loaded": True}


def _inputs(spec: dict[str, Any], signature: Any, origin: str) -> tuple[Arrays, str]:
    """The samples given (as the signature's types), else inputs generated from it."""
    from modelplane.convert.parity import generate_inputs

    if not spec.get("samples"):
        return generate_inputs(signature), "generated from the signature"
    from modelplane.protocol.datatypes import V2_TO_NUMPY

    inputs = _load_samples(Path(spec["samples"]))
    for tensor in signature.inputs:  # JSON numbers arrive as int64 or float64
        want = V2_TO_NUMPY.get(tensor.datatype)
        have = inputs[tensor.name].dtype if tensor.name in inputs else None
        if want is not None and have is not None and have.kind in "biuf" and want.kind in "biuf":
            inputs[tensor.name] = inputs[tensor.name].astype(want)
    return inputs, origin


def _optimize(spec: dict[str, Any]) -> dict[str, Any]:
    """What the user chose, or (``auto``) every way; measured on the same inputs."""
    from modelplane.convert import onnx as onnx_source

    _emit("optimize")
    source, workdir = Path(spec["source"]), Path(spec["workdir"])
    inputs, origin = _inputs(spec, onnx_source.inspect(source), "the version's samples")
    if spec.get("auto") is not None:
        from modelplane.convert.auto import optimize_auto

        return optimize_auto(source, workdir, inputs, origin, float(spec["auto"]), _emit)
    from modelplane.convert.optimize import optimize

    return optimize(source, workdir, spec.get("level"), spec.get("quantize"), inputs, origin)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    if spec["format"] == LOAD:
        return _load(Path(spec["source"]))
    if spec["format"] == "optimize":
        return _optimize(spec)

    from modelplane.convert import onnx as onnx_source
    from modelplane.convert.parity import compare

    workdir = Path(spec["workdir"])
    options = ConvertOptions(
        trust_pickle=bool(spec.get("trust_pickle")),
        input_shape=tuple(spec["input_shape"]) if spec.get("input_shape") else None,
        unpack=UnpackLimits(int(spec["unpack_max_bytes"]), float(spec["unpack_max_ratio"])),
    )
    if spec["format"] == "onnx" and spec.get("processing"):  # an ONNX push with processing
        from modelplane.convert.processing import annotate

        _emit("verify")
        target = workdir / "model.onnx"
        shutil.copyfile(spec["source"], target)
        return annotate(target, spec["processing"])
    if spec["format"] == "transformers":
        from modelplane.convert import llm_source

        root = llm_source.causal_root(Path(spec["source"]), workdir, options)
        if root is not None:  # a language model: an onnxruntime-genai bundle
            _emit("convert")
            return llm_source.convert(root, workdir, spec.get("precision") or "fp32")
    elif spec.get("precision"):
        raise InvalidInput("--precision applies to language models only")
    _emit("convert")
    started = time.perf_counter()
    converted = _converter(spec["format"])(Path(spec["source"]), workdir, options)
    convert_s = time.perf_counter() - started
    _emit("verify")
    signature = onnx_source.inspect(converted.onnx_path)
    if spec.get("samples") or converted.parity_inputs is None:
        inputs, origin = _inputs(spec, signature, "samples given with the push")
    else:
        inputs, origin = converted.parity_inputs, "sample inputs made by the converter"
    session = ort.InferenceSession(str(converted.onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    actual = dict(zip(names, session.run(names, inputs), strict=True))
    expected = converted.original(inputs)
    report = compare(expected, actual, converted.label_outputs, spec.get("tolerance"))
    report["inputs"] = origin
    report["batch"] = int(next(iter(inputs.values())).shape[0]) if inputs else 0
    report["convert_seconds"] = round(convert_s, 3)
    if spec.get("processing"):
        from modelplane.convert.processing import annotate

        processed = annotate(converted.onnx_path, spec["processing"])
        report["processing"] = processed["processing"]
        report["signature"] = processed["signature"]
    return report


def _shed(workdir: Path) -> None:
    """Drop what the model's code could use and the conversion does not need: every file
    descriptor but stdin, stdout and stderr (the runner passes none), and a working directory
    outside the scratch folder. Not a sandbox: the process keeps the server's OS user."""
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        if int(name) > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone already
                os.close(int(name))
    os.chdir(workdir)


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    _shed(Path(spec["workdir"]))
    # the parent dead: this process group (the worker and anything it started) goes too
    watch_parent(int(spec["parent_pid"]), lambda: os.killpg(0, signal.SIGKILL))
    limit = int(spec.get("memory_limit_bytes", 0))
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cpu = int(spec.get("cpu_limit_s", 0))
    if cpu:  # SIGXCPU at the soft limit, SIGKILL at the hard one
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    workdir = Path(spec["workdir"])
    try:
        report = run(spec)
    except MemoryError:
        error = {"message": f"the conversion ran out of memory (limit {limit >> 20} MiB)",
                 "status": 422}  # fmt: skip
    except ModelplaneError as exc:
        error = {"message": exc.message, "status": exc.status}
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        extra = extra_for_module(top)
        if extra:
            message = (f"the {top} package is missing on the server; install it with "
                       f"pip install 'modelplane[{extra}]'")  # fmt: skip
        else:  # the user's own module, or a library: never guess a package name to install
            message = (f"the model refers to the module {top!r}, which the server cannot import "
                       "(code of your own, or a library its environment lacks); save the model "
                       "without it, or have the operator install it")  # fmt: skip
        error = {"message": message, "status": 422}
    except Exception:
        # nobody wrote a message for this one: the traceback goes to stderr, which the parent
        # logs with the conversion id; users get a reason without internals
        traceback.print_exc()
        error = {"message": "the converter hit an unexpected error", "status": 500,
                 "unexpected": True}  # fmt: skip
    else:
        (workdir / "report.json").write_text(json.dumps(report))
        return 0
    (workdir / "error.json").write_text(json.dumps(error))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
