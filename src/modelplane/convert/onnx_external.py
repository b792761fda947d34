"""ONNX models whose weights live in external data files, pushed as a folder: every data
location must stay inside the folder; the model is made self-contained for serving."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import onnx
import onnxruntime as ort

from modelplane.convert.archive import extract
from modelplane.convert.base import Arrays, Converted, ConvertOptions
from modelplane.errors import UnsupportedModel

SINGLE_FILE_LIMIT = 2 << 30  # protobuf's limit for one self-contained ONNX file


def _check_locations(model: onnx.ModelProto, root: Path) -> None:
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        path = PurePosixPath(location)
        resolved = (root / location).resolve()
        if (
            not location
            or path.is_absolute()
            or ".." in path.parts
            or not resolved.is_relative_to(root)
        ):
            raise UnsupportedModel(
                f"tensor {tensor.name!r} points at {location!r}, outside the uploaded folder"
            )
        if not resolved.is_file():
            raise UnsupportedModel(f"tensor {tensor.name!r} needs {location!r}, not uploaded")


def convert(source: Path, workdir: Path, options: ConvertOptions) -> Converted:
    root = extract(source, workdir / "upload", 64 << 30)
    graphs = sorted(root.rglob("*.onnx"), key=lambda p: len(p.parts))
    if not graphs:
        raise UnsupportedModel("the uploaded folder has no .onnx file")
    graph_path = graphs[0]
    model = onnx.load(str(graph_path), load_external_data=False)
    _check_locations(model, graph_path.parent.resolve())
    onnx.load_external_data_for_model(model, str(graph_path.parent))
    if model.ByteSize() > SINGLE_FILE_LIMIT:
        raise UnsupportedModel("models over 2 GB with external data are not supported yet")
    path = workdir / "model.onnx"
    onnx.save(model, str(path))
    session = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def original(inputs: Arrays) -> Arrays:
        return dict(zip(names, session.run(names, inputs), strict=True))

    return Converted(path, original)
