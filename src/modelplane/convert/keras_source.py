"""Keras 3 (.keras) and legacy HDF5 (.h5) models, loaded and exported on the torch backend (no
TensorFlow needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from modelplane.convert.base import Arrays, Converted, ConvertOptions
from modelplane.errors import UnsupportedModel


def convert(source: Path, workdir: Path, options: ConvertOptions) -> Converted:
    os.environ.setdefault("KERAS_BACKEND", "torch")  # the worker's own process only
    import keras

    suffix = ".h5" if source.read_bytes()[:4] == b"\x89HDF" else ".keras"
    named = workdir / f"model{suffix}"
    named.write_bytes(source.read_bytes())  # keras picks the loader by file name
    try:
        model: Any = keras.saving.load_model(str(named), compile=False, safe_mode=True)
    except Exception as exc:
        raise UnsupportedModel(f"Keras could not load the model: {str(exc)[:400]}") from None
    shape = list(model.inputs[0].shape) if model.inputs else None
    if not shape:
        raise UnsupportedModel("the Keras model has no known input shape; build it before saving")
    example_shape = [2 if d is None else int(d) for d in shape]
    example = np.random.default_rng(0).standard_normal(example_shape).astype(np.float32)
    model(example)  # a loaded model must be called once before export
    path = workdir / "model.onnx"
    try:
        model.export(str(path), format="onnx", verbose=False)
    except Exception as exc:
        raise UnsupportedModel(f"Keras ONNX export failed: {str(exc)[:400]}") from None

    import onnx

    graph = onnx.load(str(path)).graph
    initializers = {i.name for i in graph.initializer}
    input_name = next(i.name for i in graph.input if i.name not in initializers)
    output_names = [o.name for o in graph.output]

    def original(feeds: Arrays) -> Arrays:
        result = model.predict(feeds[input_name], verbose=0)
        results = result if isinstance(result, list | tuple) else [result]
        return {n: np.asarray(r) for n, r in zip(output_names, results, strict=True)}

    return Converted(path, original, example_inputs={input_name: example})
