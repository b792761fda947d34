"""The server's disk fills up during a push (its home on a 48 MiB tmpfs, a 64 MiB upload):
the push fails with a clear error, nothing half-written is left or visible, the space is given
back, and the next push that fits succeeds."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB filesystem of its own (tmpfs), unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(folder)],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def test_a_push_that_fills_the_disk(small_disk: Path, tmp_path: Path, iris_file) -> None:
    server = Server(small_disk / "home", {})
    try:
        server.start()
        server.push(iris_file)
        used_before = shutil.disk_usage(small_disk).used
        big = tmp_path / "big.onnx"
        with big.open("wb") as f:  # larger than what is free: the staging write hits ENOSPC
            f.write(iris_file.read_bytes())
            f.write(os.urandom(64 << 20))
        failed = server.cli("push", str(big), "--name", "big")
        print(f"disk full: {failed.stderr.strip()}")
        assert failed.returncode != 0
        assert "no space left" in failed.stderr
        assert "Traceback" not in failed.stderr
        listed = httpx.get(f"{server.url}/api/v1/models", headers=server.auth).json()
        assert [m["name"] for m in listed] == ["iris"]  # nothing half-written is visible
        assert list((server.home / "blobs" / "staging").iterdir()) == []
        # the space is given back (logs grow a little meanwhile)
        assert shutil.disk_usage(small_disk).used - used_before < 1 << 20
        server.push(iris_file, "again", "--allow-duplicate")  # a push that fits works
    finally:
        server.stop()
