"""ONNX models whose weights live in external data files, pushed as a folder. Every external
reference (initializers, sparse initializers, tensor and sparse attributes such as ``Constant``'s,
in every subgraph) must name a plain file inside the version's own folder: no absolute path, no
``..``, no symlink on the way, no hardlink. The data is read here, through those checks, and the
model made self-contained for serving; ONNX Runtime never resolves a location itself."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

import onnx

from modelplane.convert.archive import extract
from modelplane.convert.base import Arrays, Converted, ConvertOptions
from modelplane.convert.onnx import all_tensors, is_external, load_session
from modelplane.errors import UnsupportedModel

SINGLE_FILE_LIMIT = 2 << 30  # protobuf's limit for one self-contained ONNX file


def _open_inside(root: Path, location: str, tensor: str) -> int:
    """A file descriptor of ``location`` under ``root``, or UnsupportedModel."""
    path = PurePosixPath(location)
    outside = UnsupportedModel(
        f"tensor {tensor!r} points at {location!r}, outside the uploaded folder"
    )
    if not location or path.is_absolute() or "\\" in location or ".." in path.parts:
        raise outside
    joined = Path(os.path.normpath(root / path))
    canonical = Path(os.path.realpath(joined))
    if not canonical.is_relative_to(root) or canonical != joined:
        raise outside  # a symlink somewhere on the way
    try:
        fd = os.open(canonical, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise UnsupportedModel(f"tensor {tensor!r} needs {location!r}, not uploaded") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        raise UnsupportedModel(
            f"tensor {tensor!r} needs {location!r}, which is not a plain file (a link?)"
        )
    return fd


def _internalize(tensor: Any, root: Path) -> None:
    """Read the tensor's external data into it, checked against ``root``."""
    entries = {e.key: e.value for e in tensor.external_data}
    fd = _open_inside(root, entries.get("location", ""), tensor.name)
    try:
        size = os.fstat(fd).st_size
        offset = int(entries.get("offset", 0) or 0)
        length = int(entries["length"]) if entries.get("length") else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise UnsupportedModel(
                f"tensor {tensor.name!r}: offset {offset} and length {length} are outside its "
                f"data file of {size} bytes"
            )
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    tensor.raw_data = data
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


def load_external_data(model: onnx.ModelProto, root: Path) -> None:
    """Make ``model`` self-contained, reading every external reference from inside ``root``."""
    root = Path(os.path.realpath(root))
    total = 0
    for tensor in all_tensors(model):
        if is_external(tensor):
            _internalize(tensor, root)
            total += len(tensor.raw_data)
            if total > SINGLE_FILE_LIMIT:
                raise UnsupportedModel("models over 2 GB with external data are not supported yet")


def convert(source: Path, workdir: Path, options: ConvertOptions) -> Converted:
    root = extract(source, workdir / "upload", options.unpack)
    graphs = sorted(root.rglob("*.onnx"), key=lambda p: len(p.parts))
    if not graphs:
        raise UnsupportedModel("the uploaded folder has no .onnx file")
    graph_path = graphs[0]
    try:
        model = onnx.load(str(graph_path), load_external_data=False)
    except Exception:
        raise UnsupportedModel(f"{graph_path.name} is not a valid ONNX model") from None
    load_external_data(model, graph_path.parent)
    if model.ByteSize() > SINGLE_FILE_LIMIT:
        raise UnsupportedModel("models over 2 GB with external data are not supported yet")
    path = workdir / "model.onnx"
    onnx.save(model, str(path))
    session = load_session(path)
    names = [o.name for o in session.get_outputs()]

    def original(inputs: Arrays) -> Arrays:
        return dict(zip(names, session.run(names, inputs), strict=True))

    return Converted(path, original)
