"""Every kind of ONNX external-data reference is confined to the version's own folder, and a
single file (which has no folder) may carry none; a model ONNX Runtime cannot load is refused
at push, before a version exists."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelplane.convert import onnx as onnx_source
from modelplane.convert.base import ConvertOptions
from modelplane.convert.onnx_external import convert, load_external_data
from modelplane.errors import UnsupportedModel

SECRET = b"\x00\x00\x80\x3f" * 4  # four float 1.0s, as a data file beside the server would be


def _external(tensor: TensorProto, location: str, length: int | None = None) -> TensorProto:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.ClearField("int64_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, **({"length": str(length)} if length else {})}
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    return tensor


def _sparse(location: str) -> onnx.SparseTensorProto:
    values = numpy_helper.from_array(np.ones(4, np.float32), "w_values")
    indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "w_indices")
    return helper.make_sparse_tensor(_external(values, location), indices, [4])


def _model(nodes: list[Any], **graph: Any) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    body = helper.make_graph(nodes, "g", [x], [y], **graph)
    return helper.make_model(body, opset_imports=[helper.make_opsetid("", 17)])


def initializer(location: str) -> onnx.ModelProto:
    w = _external(numpy_helper.from_array(np.ones(4, np.float32), "w"), location)
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], initializer=[w])


def sparse_initializer(location: str) -> onnx.ModelProto:
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])])
    sparse = _sparse(location)
    sparse.values.name = "w"
    model.graph.sparse_initializer.append(sparse)
    return model


def constant_sparse_value(location: str) -> onnx.ModelProto:
    constant = helper.make_node("Constant", [], ["w"], sparse_value=_sparse(location))
    return _model([constant, helper.make_node("Add", ["x", "w"], ["y"])])


def constant_value(location: str) -> onnx.ModelProto:
    w = _external(numpy_helper.from_array(np.ones(4, np.float32), "w"), location)
    constant = helper.make_node("Constant", [], ["w"], value=w)
    return _model([constant, helper.make_node("Add", ["x", "w"], ["y"])])


def if_branch_sparse(location: str) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], sparse_value=_sparse(location))], "b", [], [out]
    )
    cond = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", 9, [], [1]))
    choose = helper.make_node("If", ["c"], ["w"], then_branch=branch, else_branch=branch)
    return _model([cond, choose, helper.make_node("Add", ["x", "w"], ["y"])])


KINDS: dict[str, Callable[[str], onnx.ModelProto]] = {
    "initializer": initializer,
    "sparse initializer": sparse_initializer,
    "Constant sparse_value": constant_sparse_value,
    "Constant value": constant_value,
    "If branch, sparse": if_branch_sparse,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_single_file_with_any_external_reference_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # the referenced file exists beside the process: it must not be found there
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(SECRET)
    path = tmp_path / "model.onnx"
    onnx.save(KINDS[kind]("secret.bin"), str(path))
    with pytest.raises(UnsupportedModel, match="external data"):
        onnx_source.inspect(path)


@pytest.mark.parametrize("kind", ["sparse initializer", "Constant sparse_value"])
async def test_a_push_of_one_file_with_a_sparse_external_reference_is_a_422(
    api: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(SECRET)
    content = KINDS[kind]("secret.bin").SerializeToString()
    answer = await api.post("/api/v1/models/m/versions", content=content)
    assert answer.status_code == 422, answer.text
    assert "external data" in answer.json()["error"]
    assert (await api.get("/api/v1/models/m")).status_code == 404


def _folder(tmp_path: Path, model: onnx.ModelProto) -> Path:
    root = tmp_path / "folder"
    root.mkdir(parents=True)
    onnx.save(model, str(root / "model.onnx"))
    return root


def test_a_folder_model_reads_every_kind_of_reference_from_inside(tmp_path: Path) -> None:
    for kind, build in KINDS.items():
        root = _folder(tmp_path / kind.replace(" ", "_"), build("weights.bin"))
        (root / "weights.bin").write_bytes(SECRET)
        model = onnx.load(str(root / "model.onnx"), load_external_data=False)
        load_external_data(model, root)
        assert not any(onnx_source.is_external(t) for t in onnx_source.all_tensors(model))
        (y,) = ort.InferenceSession(model.SerializeToString()).run(
            None, {"x": np.zeros(4, np.float32)}
        )
        np.testing.assert_array_equal(y, np.ones(4, np.float32), err_msg=kind)


OUTSIDE = ["../secret.bin", "/etc/hostname", "sub/../../secret.bin", "", "sub\\..\\..\\x"]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("location", OUTSIDE)
def test_locations_outside_the_folder_are_refused(tmp_path: Path, kind: str, location: str) -> None:
    (tmp_path / "secret.bin").write_bytes(SECRET)
    root = _folder(tmp_path, KINDS[kind](location))
    (root / "sub").mkdir()
    model = onnx.load(str(root / "model.onnx"), load_external_data=False)
    with pytest.raises(UnsupportedModel, match="outside the uploaded folder"):
        load_external_data(model, root)


@pytest.mark.parametrize("kind", ["initializer", "sparse initializer", "Constant sparse_value"])
def test_links_are_refused(tmp_path: Path, kind: str) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    root = _folder(tmp_path, KINDS[kind]("link.bin"))
    model = onnx.load(str(root / "model.onnx"), load_external_data=False)
    (root / "link.bin").symlink_to(secret)
    with pytest.raises(UnsupportedModel, match="outside the uploaded folder"):
        load_external_data(model, root)
    (root / "link.bin").unlink()
    (root / "dir").symlink_to(tmp_path)  # a symlinked folder on the way
    moved = KINDS[kind]("dir/secret.bin")
    with pytest.raises(UnsupportedModel, match="outside the uploaded folder"):
        load_external_data(moved, root)
    os.link(secret, root / "link.bin")  # a hardlink looks like a plain file
    with pytest.raises(UnsupportedModel, match="not a plain file"):
        load_external_data(model, root)


def test_a_pushed_folder_with_a_sparse_reference_outside_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "up.tgz"
    model = sparse_initializer("../secret.bin").SerializeToString()
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("model.onnx")
        info.size = len(model)
        tar.addfile(info, io.BytesIO(model))
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "secret.bin").write_bytes(SECRET)
    with pytest.raises(UnsupportedModel, match="outside the uploaded folder"):
        convert(archive, tmp_path / "work" / "job", ConvertOptions())


def _unloadable(kind: str) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    if kind == "unknown domain":
        node = helper.make_node("Nope", ["x"], ["y"], domain="com.example")
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    else:
        node, opsets = helper.make_node("Identity", ["x"], ["y"]), [helper.make_opsetid("", 99)]
    graph = helper.make_graph([node], "g", [x], [y])
    return bytes(helper.make_model(graph, opset_imports=opsets).SerializeToString())


@pytest.mark.parametrize("kind", ["unknown domain", "unknown opset"])
async def test_a_model_onnx_runtime_cannot_load_is_refused_at_push(
    api: httpx.AsyncClient, kind: str
) -> None:
    answer = await api.post("/api/v1/models/m/versions", content=_unloadable(kind))
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "unsupported_model"
    assert "ONNX Runtime cannot load this model" in answer.json()["error"]
    assert "/onnxruntime_src" not in answer.json()["error"]
    assert (await api.get("/api/v1/models/m")).status_code == 404
