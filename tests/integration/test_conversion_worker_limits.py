"""The conversion worker never outlives its server, never spins a core past its CPU-time limit,
and leaves no scratch folder behind a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelplane.convert.archive import UnpackLimits
from modelplane.convert.runner import ConversionRunner, ConversionSpec
from modelplane.errors import ModelplaneError, UnsupportedModel
from modelplane.registry.db import make_engine, make_sessions
from modelplane.registry.tables import ConversionRow
from modelplane.server import build
from modelplane.settings import Settings
from modelplane.testing import wait_for


class Runs:
    """A trusted pickle whose loading runs ``code`` in the conversion worker."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> Any:
        return (exec, (self.code,))


def test_the_worker_exits_when_its_server_is_killed(tmp_path: Path) -> None:
    source = tmp_path / "hang.pkl"
    source.write_bytes(pickle.dumps(Runs("import time; time.sleep(600)"), protocol=4))
    server = textwrap.dedent(f"""
        import asyncio
        from pathlib import Path
        from modelplane.convert.archive import UnpackLimits
        from modelplane.convert.runner import ConversionRunner, ConversionSpec
        runner = ConversionRunner(600, 0, 0, UnpackLimits(1 << 20))
        spec = ConversionSpec(Path({str(source)!r}), "sklearn", Path({str(tmp_path / "job")!r}),
                              trust_pickle=True)
        asyncio.run(runner.run(spec))
    """)
    parent = subprocess.Popen([sys.executable, "-c", server])
    try:
        found: list[psutil.Process] = []

        def worker_started() -> bool:
            found[:] = psutil.Process(parent.pid).children()
            return bool(found)

        wait_for(worker_started, timeout=60)
        worker = found[0]
        assert "modelplane.convert.worker" in " ".join(worker.cmdline())
        parent.kill()  # kill -9: no cleanup of any kind in the server
        parent.wait()
        worker.wait(timeout=10)
    finally:
        parent.kill()
        for child in found:
            if child.is_running():
                child.kill()


async def test_a_conversion_that_spins_is_stopped_by_its_cpu_limit(tmp_path: Path) -> None:
    source = tmp_path / "spin.pkl"
    source.write_bytes(pickle.dumps(Runs("while True: pass"), protocol=4))
    runner = ConversionRunner(300, 0, 3, UnpackLimits(1 << 20))
    spec = ConversionSpec(source, "sklearn", tmp_path / "job", trust_pickle=True)
    with pytest.raises(UnsupportedModel, match="more than 3 CPU-seconds"):
        await asyncio.wait_for(runner.run(spec), 120)


def test_scratch_folders_of_interrupted_conversions_are_removed_at_start(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    build(settings)
    work = settings.work_dir
    left = work / "0123456789abcdef"
    (left / "upload").mkdir(parents=True)
    (left / "upload" / "weights.bin").write_bytes(b"x" * 1000)
    (work / "artifacts").mkdir()  # not a scratch folder (the Ray executor's cache)
    stamp = datetime.now(UTC)
    sessions = make_sessions(make_engine(settings.resolved_database_url))
    with sessions.begin() as session:
        session.add(ConversionRow(
            id="0123456789abcdef", model="m", source_format="sklearn", source_digest="0" * 64,
            state="running", stage="convert", created_by="t", created_at=stamp, updated_at=stamp,
        ))  # fmt: skip
    restarted = build(settings)
    assert not left.exists()
    assert (work / "artifacts").is_dir()
    assert restarted.services.conversions.get("0123456789abcdef").state == "failed"
    assert json.dumps(sorted(p.name for p in work.iterdir())) == '["artifacts"]'


async def test_the_worker_holds_no_secret_no_descriptor_and_works_in_its_scratch_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_MASTER_KEY", "bWFzdGVy")
    monkeypatch.setenv("MODELPLANE_DATABASE_URL", "postgresql://u:secret@db/modelplane")
    monkeypatch.setenv("MODELPLANE_API_KEY", "mpk_0_secret")
    probe = tmp_path / "probe.json"
    code = (
        "import json, os, contextlib; fds = []\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    with contextlib.suppress(OSError): fds.append(os.readlink('/proc/self/fd/' + fd))\n"
        f"open({str(probe)!r}, 'w').write(json.dumps({{'env': dict(os.environ),"
        " 'cwd': os.getcwd(), 'fds': fds, 'stdin': os.readlink('/proc/self/fd/0')}))"
    )
    source = tmp_path / "probe.pkl"
    source.write_bytes(pickle.dumps(Runs(code), protocol=4))
    held = open(tmp_path / "held", "w")  # noqa: SIM115  (a descriptor the server holds open)
    os.set_inheritable(held.fileno(), True)
    try:
        runner = ConversionRunner(120, 0, 0, UnpackLimits(1 << 20))
        spec = ConversionSpec(source, "sklearn", tmp_path / "job", trust_pickle=True)
        with contextlib.suppress(ModelplaneError):  # the probe is no model
            await asyncio.wait_for(runner.run(spec), 120)
    finally:
        held.close()
    seen = json.loads(probe.read_text())
    assert not [k for k in seen["env"] if k.startswith("MODELPLANE")]
    assert "secret" not in json.dumps(seen["env"])
    assert seen["cwd"] == str(tmp_path / "job")
    assert str(tmp_path / "held") not in seen["fds"]  # nothing of the server's is open
    assert seen["stdin"] == "/dev/null"
