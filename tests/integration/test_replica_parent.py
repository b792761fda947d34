"""A replica watches the process that started it by the pid it was given, so one whose server
died while it was starting exits at once instead of outliving it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from modelplane.cluster.local import replica_environment
from modelplane.testing import identity_onnx


def test_the_environment_names_the_server_as_the_parent() -> None:
    env = replica_environment("token", "0" * 64, None)
    assert env["MODELPLANE_REPLICA_PARENT_PID"] == str(os.getpid())


def test_a_replica_whose_parent_is_already_gone_exits_at_once(tmp_path: Path) -> None:
    model = identity_onnx("FP32")
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(model)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that was a parent once and is no longer anybody's
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    env["MODELPLANE_REPLICA_TOKEN"] = "t"
    env["MODELPLANE_REPLICA_PARENT_PID"] = str(gone.pid)
    replica = subprocess.Popen(
        [sys.executable, "-m", "modelplane.serving.replica", "--name", "m", "--version", "1",
         "--artifact", str(artifact), "--digest", hashlib.sha256(model).hexdigest(),
         "--uds", str(tmp_path / "r.sock")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = replica.communicate(timeout=30)
    finally:
        replica.kill()
    assert replica.returncode == 0
    assert f"parent process {gone.pid} is gone" in out.decode()
