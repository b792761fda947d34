"""Format detection and archive unpacking on real files (no sockets)."""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import pytest

from modelplane.convert.archive import UnpackLimits, extract
from modelplane.convert.detect import detect
from modelplane.errors import UnsupportedModel

LIMITS = UnpackLimits(1 << 30)


def write_zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            z.writestr(name, b"x")
    return path


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_formats_are_detected_from_content_not_names(tmp_path: Path, iris_bytes: bytes) -> None:
    cases = {
        "onnx": iris_bytes,
        "keras-h5": b"\x89HDF\r\n\x1a\n" + b"\0" * 32,
        "sklearn": pickle.dumps({"a": 1}, protocol=4),
    }
    for expected, data in cases.items():
        path = tmp_path / "upload.bin"  # same misleading name for all
        path.write_bytes(data)
        assert detect(path, LIMITS) == expected
    keras = write_zip(tmp_path / "k.zip", ["config.json", "model.weights.h5", "metadata.json"])
    assert detect(keras, LIMITS) == "keras"
    script = write_zip(tmp_path / "s.zip", ["m/code/m.py", "m/data.pkl", "m/constants.pkl"])
    assert detect(script, LIMITS) == "torchscript"
    exported = write_zip(tmp_path / "e.zip", ["m/models/model.json", "m/archive_format"])
    assert detect(exported, LIMITS) == "torch-export"
    hf = write_tar(tmp_path / "hf.tgz", {"m/config.json": b"{}", "m/tokenizer.json": b"{}"})
    assert detect(hf, LIMITS) == "transformers"
    tf = write_tar(tmp_path / "tf.tgz", {"saved_model.pb": b"", "variables/v.index": b""})
    assert detect(tf, LIMITS) == "tensorflow"
    folder = write_tar(tmp_path / "o.tgz", {"model.onnx": b"", "weights.bin": b""})
    assert detect(folder, LIMITS) == "onnx-folder"


def test_a_bare_state_dict_is_refused_with_what_to_save(tmp_path: Path) -> None:
    weights = write_zip(tmp_path / "w.pt", ["w/data.pkl", "w/data/0", "w/version"])
    with pytest.raises(UnsupportedModel, match=r"torch\.jit\.save"):
        detect(weights, LIMITS)


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd-copy", "a/../../escape.txt"])
def test_archive_members_cannot_escape(tmp_path: Path, name: str) -> None:
    archive = write_tar(tmp_path / "bad.tgz", {"ok.txt": b"fine", name: b"evil"})
    with pytest.raises(UnsupportedModel, match="outside the upload"):
        extract(archive, tmp_path / "out", UnpackLimits(1 << 20))
    assert not (tmp_path / "escape.txt").exists()


def test_links_and_oversized_archives_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("config.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UnsupportedModel, match="link or special file"):
        extract(archive, tmp_path / "out", UnpackLimits(1 << 20))
    big = write_tar(tmp_path / "big.tgz", {"a.bin": b"x" * 2000})
    with pytest.raises(UnsupportedModel, match="more than 1000 bytes"):
        extract(big, tmp_path / "out2", UnpackLimits(1000))
