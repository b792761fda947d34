"""A compression bomb is refused while it is read: format detection reads only what it needs,
and unpacking stops at the limits (the push limit, and a ratio to the archive's size) before the
bytes reach the disk."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from modelplane.convert.archive import UnpackLimits, extract
from modelplane.convert.detect import detect
from modelplane.convert.runner import ConversionRunner, ConversionSpec
from modelplane.errors import UnsupportedModel
from modelplane.settings import Settings

ZEROS = 8 << 20  # compresses to about 8 KB: a thousandfold


def bomb(path: Path, first: str = "model.onnx") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, size in ((first, 3), ("zeros.bin", ZEROS), ("last.txt", 3)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"\0" * size))
    assert path.stat().st_size < 64 << 10
    return path


def written(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_detection_refuses_a_bomb_while_reading_it(tmp_path: Path) -> None:
    archive = bomb(tmp_path / "bomb.tgz")
    with pytest.raises(UnsupportedModel, match="100 times its own size"):
        detect(archive, UnpackLimits(1 << 30, 100))
    with pytest.raises(UnsupportedModel, match=f"more than {1 << 20} bytes"):
        detect(archive, UnpackLimits(1 << 20, 10_000))


def test_detection_stops_at_the_entries_that_settle_the_format(tmp_path: Path) -> None:
    archive = bomb(tmp_path / "tf.tgz", first="saved_model.pb")
    assert detect(archive, UnpackLimits(1 << 20, 10)) == "tensorflow"  # the bomb is never read


def test_unpacking_stops_before_the_bomb_is_written(tmp_path: Path) -> None:
    archive = bomb(tmp_path / "bomb.tgz")
    out = tmp_path / "out"
    with pytest.raises(UnsupportedModel, match="refused while unpacking"):
        extract(archive, out, UnpackLimits(1 << 30, 100))
    assert written(out) < 1 << 20
    extract(archive, tmp_path / "fine", UnpackLimits(1 << 30, 10_000))  # within the limits
    assert written(tmp_path / "fine") == ZEROS + 6


async def test_a_pushed_bomb_is_refused_quickly(tmp_path: Path, api: httpx.AsyncClient) -> None:
    archive = bomb(tmp_path / "bomb.tgz")
    started = time.perf_counter()
    answer = await api.post("/api/v1/models/m/versions", content=archive.read_bytes())
    assert answer.status_code == 422, answer.text
    assert "refused while unpacking" in answer.json()["error"]
    assert time.perf_counter() - started < 5


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", convert={"max_unpack_ratio": 20})


async def test_the_push_settings_limit_detection(api: httpx.AsyncClient, tmp_path: Path) -> None:
    archive = tmp_path / "ratio.tgz"
    with tarfile.open(archive, "w:gz") as tar:  # compresses about 50x: under 100, over 20
        data = bytes(range(256)) * 4 + b"\0" * (1 << 16)
        for name in ("model.onnx", "w.bin"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    answer = await api.post("/api/v1/models/m/versions", content=archive.read_bytes())
    assert answer.status_code == 422, answer.text
    assert "20 times its own size" in answer.json()["error"]


async def test_the_worker_unpacks_within_the_limits_it_is_given(tmp_path: Path) -> None:
    archive = bomb(tmp_path / "bomb.tgz")
    runner = ConversionRunner(120, 0, 0, UnpackLimits(1 << 30, 100))
    workdir = tmp_path / "job"
    with pytest.raises(UnsupportedModel, match="refused while unpacking"):
        await runner.run(ConversionSpec(archive, "onnx-folder", workdir))
    assert written(workdir / "upload") < 1 << 20
