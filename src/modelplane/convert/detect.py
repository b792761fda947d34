"""Which format a pushed file is, from its content (never its name)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zipfile
import zlib
from pathlib import Path
from typing import Any

from modelplane.convert.archive import UnpackLimits, is_archive, member_names
from modelplane.errors import UnsupportedModel

HDF5 = b"\x89HDF\r\n\x1a\n"
ZIP = b"PK\x03\x04"
PICKLE_PROTOCOLS = {2, 3, 4, 5}
COMPRESSIONS: tuple[tuple[bytes, Any], ...] = (
    (b"\x1f\x8b", gzip),
    (b"BZh", bz2),
    (b"\xfd7zXZ\x00", lzma),
)


def _is_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS


def _decompressed_head(path: Path, head: bytes) -> bytes | None:
    """The first bytes after a compression layer joblib may have used, if any."""
    for magic, module in COMPRESSIONS:
        if head.startswith(magic):
            try:
                with module.open(path, "rb") as f:
                    data: bytes = f.read(16)
                return data
            except (OSError, EOFError, lzma.LZMAError):
                return None
    if head[:1] == b"\x78":  # zlib
        try:
            with path.open("rb") as f:
                return zlib.decompressobj().decompress(f.read(4096), 16)[:16]
        except zlib.error:
            return None
    return None


def _zip_format(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    tops = {n.split("/", 1)[-1] for n in names}
    if "config.json" in names and "model.weights.h5" in names:
        return "keras"
    if any(n.endswith(("serialized_exported_program.json", "archive_format"))
           or "/models/model.json" in n for n in names):  # fmt: skip
        return "torch-export"
    if any("/code/" in n for n in names) and "constants.pkl" in tops:
        return "torchscript"
    if "data.pkl" in tops:
        raise UnsupportedModel(
            "this is a PyTorch state dict (weights without the architecture), which cannot be "
            "served; save the whole model instead: torch.jit.save(torch.jit.script(model), "
            "'model.pt') or torch.export.save(torch.export.export(model, (example,)), "
            "'model.pt2')"
        )
    raise UnsupportedModel("a zip archive that is neither a Keras model nor a PyTorch program")


def _decided(bare: set[str]) -> bool:
    """Whether the names seen so far settle the format (the rest need not be read)."""
    return "saved_model.pb" in bare or (
        "config.json" in bare and ("tokenizer.json" in bare or "vocab.txt" in bare)
    )


def _tar_format(path: Path, limits: UnpackLimits) -> str:
    bare = member_names(path, limits, _decided)
    if "saved_model.pb" in bare:
        return "tensorflow"
    if "config.json" in bare and ("tokenizer.json" in bare or "vocab.txt" in bare):
        return "transformers"
    if any(n.endswith(".onnx") for n in bare):
        return "onnx-folder"
    raise UnsupportedModel(
        "a directory upload must be a TensorFlow SavedModel (saved_model.pb), a Hugging Face "
        "model directory (config.json and tokenizer.json) or an ONNX model with its external "
        "data files"
    )


def detect(path: Path, limits: UnpackLimits) -> str:
    """One of: onnx, onnx-folder, keras, keras-h5, torchscript, torch-export, sklearn,
    tensorflow, transformers. Raises UnsupportedModel with what was found otherwise. An archive
    is read as a stream, only as far as its names settle the format, within ``limits``."""
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(HDF5):
        return "keras-h5"
    if head.startswith(ZIP):
        return _zip_format(path)
    if _is_pickle(head):
        return "sklearn"
    inner = _decompressed_head(path, head)
    if inner is not None and _is_pickle(inner):
        return "sklearn"
    if is_archive(path):
        return _tar_format(path, limits)
    return "onnx"  # validated by the ONNX parser, which says clearly when it is not
