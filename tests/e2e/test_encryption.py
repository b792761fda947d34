"""Encryption at rest with the real CLI and processes: a pushed model deploys and answers from a
sealed blob, the master key rotates while it serves and every version loads after a restart, and
a wrong master key stops start-up with a message that says so."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping

import httpx
import pytest

from modelplane.testing import IRIS_REQUEST, identity_onnx, wait_for

pytestmark = pytest.mark.e2e


def answers(server, name: str, request: Mapping[str, object]) -> bool:
    response = httpx.post(
        f"{server.url}/v2/models/{name}/infer", headers=server.auth, json=request, timeout=30
    )
    return response.status_code == 200


ECHO = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}


def test_sealed_models_serve_survive_rotation_and_a_wrong_key_stops_start(
    server_factory, iris_file, tmp_path
) -> None:
    server = server_factory()
    server.start()
    echo = tmp_path / "echo.onnx"
    echo.write_bytes(identity_onnx("FP32"))
    server.push(iris_file)
    server.push(echo, "echo")
    blobs = [p for p in (server.home / "blobs").rglob("*") if p.is_file()]
    assert blobs
    for path in blobs:
        data = path.read_bytes()
        assert b"float_input" not in data, path
        assert b"skl2onnx" not in data, path
    master = server.home / "master.key"
    assert master.stat().st_mode & 0o777 == 0o600

    for name in ("iris", "echo"):
        assert server.cli("deploy", name).returncode == 0
    wait_for(lambda: answers(server, "iris", IRIS_REQUEST), timeout=90)
    wait_for(lambda: answers(server, "echo", ECHO), timeout=90)

    before = master.read_bytes()
    rotated = server.cli("admin", "rotate-master-key")
    assert rotated.returncode == 0, rotated.stderr
    assert "2 data key(s) re-wrapped" in rotated.stdout
    assert master.read_bytes() != before
    assert answers(server, "iris", IRIS_REQUEST)  # no downtime: replicas keep serving

    server.stop()
    server.start()  # replicas load every version again, with the data keys the new key opens
    wait_for(lambda: answers(server, "iris", IRIS_REQUEST), timeout=90)
    wait_for(lambda: answers(server, "echo", ECHO), timeout=90)
    server.stop()

    master.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")  # someone replaced the file
    result = server.cli("serve", "--port", str(server.port), "--grpc-port", str(server.grpc_port))
    assert result.returncode != 0
    assert f"the master key in {master} does not open the data keys" in result.stderr
    assert "was the file replaced?" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
