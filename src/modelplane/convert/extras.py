"""Which optional extra each source format's converter needs, and whether it is installed.

The server and its conversion worker run in one environment, so the server can tell before a
conversion starts (without importing any framework) that the worker would fail to import one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import NamedTuple

from modelplane.errors import UnsupportedModel


class Needs(NamedTuple):
    what: str  # how the message names the format
    extra: str  # pip install 'modelplane[extra]'
    modules: tuple[str, ...]  # top-level modules the converter imports


TORCH = ("torch", "onnxscript")
# source format (as detect() names it) -> what converting it needs; formats not listed (onnx,
# onnx-folder, and optimizing a stored version) need only the core
FORMAT_EXTRAS: dict[str, Needs] = {
    "sklearn": Needs("scikit-learn model", "sklearn", ("sklearn", "skl2onnx", "joblib")),
    "torchscript": Needs("PyTorch model", "torch", TORCH),
    "torch-export": Needs("PyTorch model", "torch", TORCH),
    "keras": Needs("Keras model", "keras", ("keras", "h5py", *TORCH)),
    "keras-h5": Needs("Keras model", "keras", ("keras", "h5py", *TORCH)),
    "tensorflow": Needs("TensorFlow SavedModel", "tensorflow", ("tensorflow", "tf2onnx")),
    "transformers": Needs("Hugging Face model", "transformers", ("transformers", *TORCH)),
}


def importable(module: str) -> bool:
    """Whether ``import module`` would find it here (looked up, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_extra(source_format: str, is_importable: Callable[[str], bool] = importable) -> None:
    """Raise UnsupportedModel, naming the pip command, if the format's extra is not installed."""
    needs = FORMAT_EXTRAS.get(source_format)
    if needs is None:
        return
    importlib.invalidate_caches()  # an extra installed while the server runs counts
    if not all(is_importable(m) for m in needs.modules):
        raise UnsupportedModel(
            f"pushing a {needs.what} needs the {needs.extra} extra: "
            f"pip install 'modelplane[{needs.extra}]'"
        )


# what declared processing of images and audio needs (any format)
MEDIA_MODULES = {"PIL": "media", "soundfile": "media", "soxr": "media"}


def extra_for_module(module: str) -> str | None:
    """The extra that provides a top-level module (the first format listing it wins)."""
    if module in MEDIA_MODULES:
        return MEDIA_MODULES[module]
    for needs in FORMAT_EXTRAS.values():
        if module in needs.modules:
            return needs.extra
    return None
