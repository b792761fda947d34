"""`modelplane optimize` makes a new, faster version with lineage and a measured report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from modelplane.testing import mlp_onnx, trained_mlp

pytestmark = pytest.mark.e2e


def test_int8_quantization_is_measured_reported_and_served(shared_server, tmp_path: Path):
    path = tmp_path / "mlp.onnx"
    path.write_bytes(mlp_onnx())
    assert shared_server.cli("push", str(path), "--name", "mlp").returncode == 0
    result = shared_server.cli("optimize", "mlp:1", "--quantize", "int8", "--level", "all",
                               "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    version = json.loads(result.stdout)
    assert version["version"] == 2
    assert version["parent"] == "mlp:1"
    report = version["report"]
    latency = report["optimization"]["latency"]
    assert set(latency) == {"batch_1", "batch_32"}
    assert all(v["before_ms"] > 0 and v["after_ms"] > 0 for v in latency.values())
    assert report["optimization"]["size_after"] < report["optimization"]["size_before"]
    [output] = report["outputs"]
    assert output["max_abs_error"] > 0  # int8 changes the numbers, and says by how much
    shown = shared_server.cli("models", "show", "mlp:2")
    assert "SPEEDUP" in shown.stdout
    assert "accuracy vs the source version" in shown.stdout

    assert shared_server.cli("deploy", "mlp:2").returncode == 0
    client = triton.InferenceServerClient(shared_server.url.removeprefix("http://"))
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    tensor = triton.InferInput("x", [4, 256], "FP32")
    tensor.set_data_from_numpy(x)
    out = client.infer("mlp", [tensor], headers=shared_server.auth).as_numpy("y")
    assert out.shape == (4, 10)

    bad = shared_server.cli("optimize", "mlp:1", "--quantize", "int4")
    assert bad.returncode == 2
    assert "int8|fp16" in bad.stderr


def test_auto_keeps_the_fastest_within_the_budget_and_rolls_it_out(shared_server, tmp_path):
    """The benchmark's MLP (256-1024-1024-1024-10), trained, pushed with held-out samples:
    ``optimize --auto`` measures every candidate (structured pruning among them) on those
    samples and keeps one at least 2x faster at batch 1 whose predictions changed on at most
    0.5% of them; ``--deploy`` rolls it out under the deployment's rollout policy."""
    model, samples = trained_mlp()
    path, rows = tmp_path / "clf.onnx", tmp_path / "samples.npz"
    path.write_bytes(model)
    np.savez(rows, x=samples)
    shared_server.push(path, "clf", "--samples", str(rows))
    policy = "steps=10,100 interval=1m max-error-rate=5% max-p99-ratio=3"
    deployed = shared_server.cli("deploy", "clf:1", "--rollout", policy)
    assert deployed.returncode == 0, deployed.stderr

    result = shared_server.cli("optimize", "clf:1", "--auto", "--max-accuracy-drop", "0.5%",
                               "--deploy")  # fmt: skip
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    assert "created clf:2 from clf:1" in result.stdout
    assert "CANDIDATE" in result.stdout  # the whole table
    assert "clf: clf:2 beside clf:1 (rollout)" in result.stdout
    assert "traffic: clf:1 90%, clf:2 10%" in result.stdout

    version = shared_server.cli("models", "show", "clf:2", "--json")
    report = json.loads(version.stdout)["report"]
    optimization = report["optimization"]
    measured = {c["name"]: c for c in optimization["candidates"] if "error" not in c}
    pruned = [c for name, c in measured.items() if name.startswith("pruned")]
    assert len(pruned) >= 3  # structured pruning measured, at several shares of the units
    assert all(c["speedup_batch_1"] > 0 and c["speedup_batch_32"] > 0 for c in pruned)
    assert any(c["size"] < optimization["size_before"] / 2 for c in pruned)
    chosen = measured[optimization["chosen"]]
    assert chosen["accuracy_drop"] <= 0.005
    assert optimization["latency"]["batch_1"]["speedup"] >= 2.0
    # half the samples fit (unit importance, calibration), the other half judge
    assert report["inputs"].startswith("the version's samples (judged on 1000 rows held out")
    assert report["batch"] == len(samples) // 2
    print(f"kept {optimization['chosen']}: "
          f"{optimization['latency']['batch_1']['speedup']}x at batch 1, "
          f"{optimization['latency']['batch_32']['speedup']}x at batch 32, "
          f"{chosen['accuracy_drop']:.2%} of predictions changed")  # fmt: skip

    # the new version serves beside the current one: the rollout's first step
    traffic = {t["ref"]: t for t in shared_server.deployment("clf")["traffic"]}
    assert set(traffic) == {"clf:1", "clf:2"}
    assert traffic["clf:2"]["percent"] == 10

    # --auto chooses the level and quantization itself; a budget must be a share
    mixed = shared_server.cli("optimize", "clf:1", "--auto", "--level", "all")
    assert mixed.returncode == 2
    assert "drop --level and --quantize" in mixed.stderr
    bare = shared_server.cli("optimize", "clf:1", "--auto", "--max-accuracy-drop", "0.5")
    assert bare.returncode == 2  # half a percent, or a half? said as a percentage only
    assert "write it as a percentage, e.g. 0.5%" in bare.stderr
    alone = shared_server.cli("optimize", "clf:1", "--level", "all", "--max-accuracy-drop", "1%")
    assert alone.returncode == 2
    assert "goes with --auto" in alone.stderr
    # by hand too, the accuracy change is measured on the version's samples
    manual = shared_server.cli("optimize", "clf:1", "--quantize", "int8", "--json")
    assert manual.returncode == 0, manual.stderr
    manual_report = json.loads(manual.stdout)["report"]
    assert manual_report["inputs"] == "the version's samples, compared with the source version"
    assert manual_report["batch"] == len(samples)
