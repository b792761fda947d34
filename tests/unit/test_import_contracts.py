"""The import contracts in pyproject.toml that list modules by hand still list them all."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import modelplane
import modelplane.scheduler
from modelplane.serving.replica_env import ReplicaEnv, ReplicaEnvError

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_pure_scheduler_policies_are_kept_from_every_other_module() -> None:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    [pure] = [c for c in contracts if c["name"].startswith("scheduler policies are pure")]
    ours = {f"modelplane.{m.name}" for m in pkgutil.iter_modules(modelplane.__path__)}
    ours |= {
        f"modelplane.scheduler.{m.name}"
        for m in pkgutil.iter_modules(modelplane.scheduler.__path__)
    }
    allowed = {"modelplane.domain", "modelplane.scheduler", *pure["source_modules"]}
    assert sorted(pure["forbidden_modules"]) == sorted(ours - allowed)


def test_a_replica_process_loads_no_web_or_settings_framework() -> None:
    """Every replica is its own process: what it imports is paid once per replica in memory."""
    heavy = ("pydantic", "pydantic_settings", "fastapi", "starlette", "sqlalchemy", "httpx", "onnx")
    probe = (
        "import sys, modelplane.serving.replica; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_replica_environment_names_a_malformed_value() -> None:
    env = ReplicaEnv.read({"MODELPLANE_REPLICA_PARENT_PID": "12", "MODELPLANE_REPLICA_TOKEN": "t"})
    assert (env.parent_pid, env.token, env.artifact_key) == (12, "t", "")
    with pytest.raises(ReplicaEnvError, match="PARENT_PID must be a process id"):
        ReplicaEnv.read({"MODELPLANE_REPLICA_PARENT_PID": "abc"})
    with pytest.raises(ReplicaEnvError, match="ARTIFACT_KEY must be hex"):
        ReplicaEnv.read({"MODELPLANE_REPLICA_ARTIFACT_KEY": "zz"})
