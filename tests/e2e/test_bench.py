"""Each benchmark run end to end at a tiny size, so none can stop working unnoticed: it must
exit cleanly, print its table and write its JSON. The figures themselves are not checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, results: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """Run ``bench/<script>`` with ``args``; its output and the JSON it wrote."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--results", str(results), *args],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [written] = results.glob("*.json")
    assert written.with_suffix(".md").read_text() in done.stdout
    assert f"written: {written}" in done.stdout
    result: dict[str, Any] = json.loads(written.read_text())
    return done.stdout, result


def test_scheduler_benchmark(tmp_path: Path) -> None:
    out, result = run_bench(
        "scheduler.py", tmp_path, "--nodes", "200", "--replicas", "1000", "--deployments", "40",
        "--failures", "5",
    )  # fmt: skip
    assert "| replicas placed | 1,000 of 1,000 | all |" in out
    assert result["placement"]["placed"] == 1000
    failures = result["node_failures"]
    assert failures["failed_nodes"] == 5
    assert failures["unplaced"] == 0
    assert result["scale_up"]["replicas"] > 0


def test_convert_benchmark(tmp_path: Path) -> None:
    out, result = run_bench("convert.py", tmp_path, "--smoke")
    assert "| model | format | convert + verify (s) |" in out
    assert [r["parity"] for r in result["conversions"]] == ["passed", "passed"]
    [optimized] = result["optimizations"]
    assert optimized["size_ratio"] < 1  # int8 weights


def test_serving_benchmark_without_mlserver(tmp_path: Path) -> None:
    out, result = run_bench("serving.py", tmp_path / "results", "--smoke", "--work", str(tmp_path))
    assert "MLServer skipped" in out
    assert "| system | model | protocol |" in out
    rows = result["rows"]
    assert {(r["model"], r["protocol"]) for r in rows} == {
        (model, protocol) for model in ("iris", "mlp") for protocol in ("json", "binary", "grpc")
    }
    assert all(r["requests_s"] > 0 and r["errors"] == 0 for r in rows)
    assert result["telemetry"]["rounds"] == 1
    assert not result["mlserver"]


def test_quotas_benchmark(tmp_path: Path) -> None:
    out, result = run_bench("quotas.py", tmp_path, "--smoke")
    assert "| key | limits | requests/s |" in out
    assert "cost of limits not reached" in out
    rows = {r["key"]: r for r in result["rows"]}
    assert set(rows) == {"free-a", "free-b", "limited"}
    assert all(r["requests_s"] > 0 and r["errors"] == 0 for r in rows.values())
    assert isinstance(result["cost_pct"], float)


def test_llm_benchmark(tmp_path: Path) -> None:
    out, result = run_bench("llm.py", tmp_path, "--smoke")
    assert "| model | streams | system | output tokens/s (median) | vs one at a time |" in out
    systems = {(r["model"], r["streams"], r["system"]) for r in result["rows"]}
    assert ("tiny", 4, "modelplane") in systems
    assert all(r["tokens_per_s"] > 0 for r in result["rows"])
    assert result["embeddings"]["modelplane"] > 0


def test_soak_benchmark(tmp_path: Path) -> None:
    out, result = run_bench("soak.py", tmp_path, "--smoke")
    assert "| minute | requests/s | p99 (ms) |" in out
    assert "| series | rise over the run | allowed | flat |" in out
    samples = result["samples"]
    assert len(samples) >= 4
    assert all(s["failed"] == 0 and s["requests_s"] > 0 for s in samples)
    assert result["unknown_404"] > 0
    assert result["unknown_other"] == 0  # every unknown name got its 404
    assert result["churn"]["cycles"] >= 3
    assert result["churn"]["errors"] == 0
    # neither the churned deployment nor the unknown names leave series behind
    assert result["verdicts"]["metric_series"]["flat"]
    [plot] = tmp_path.glob("*.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
