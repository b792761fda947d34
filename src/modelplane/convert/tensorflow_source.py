"""TensorFlow SavedModel directories (the serving_default signature) via tf2onnx. Needs the
optional extra: pip install 'modelplane[tensorflow]'."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from modelplane.convert.archive import extract, find_root
from modelplane.convert.base import Arrays, Converted, ConvertOptions
from modelplane.errors import UnsupportedModel

SIGNATURE = "serving_default"


def convert(source: Path, workdir: Path, options: ConvertOptions) -> Converted:
    import tensorflow as tf

    root = find_root(extract(source, workdir / "upload", options.unpack), "saved_model.pb")
    loaded = tf.saved_model.load(str(root))
    if SIGNATURE not in loaded.signatures:
        raise UnsupportedModel(
            f"the SavedModel has no {SIGNATURE!r} signature; save it with "
            "tf.saved_model.save(model, path, signatures={'serving_default': fn})"
        )
    function = loaded.signatures[SIGNATURE]
    path = workdir / "model.onnx"
    done = subprocess.run(
        [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(root), "--signature_def",
         SIGNATURE, "--output", str(path), "--opset", "17"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not path.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise UnsupportedModel(f"tf2onnx could not convert the SavedModel: {' '.join(tail)[:400]}")

    def original(inputs: Arrays) -> Arrays:
        result = function(**{name: tf.constant(value) for name, value in inputs.items()})
        return {name: np.asarray(tensor.numpy()) for name, tensor in result.items()}

    return Converted(path, original)
