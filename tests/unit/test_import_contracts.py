"""The import contracts in pyproject.toml that list modules by hand still list them all."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import modelplane
import modelplane.scheduler

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
