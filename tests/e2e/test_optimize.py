"""`modelplane optimize` makes a new, faster version with lineage and a measured report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from modelplane.testing import mlp_onnx

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
