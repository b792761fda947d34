"""Crashes and restarts: nothing half-written is visible, deployments come back by themselves."""

from __future__ import annotations

import json
import os
import signal
import socket

import httpx
import psutil
import pytest

from modelplane.testing import IRIS_REQUEST, wait_for

pytestmark = pytest.mark.e2e

GOOD = IRIS_REQUEST


def infer_ok(server) -> bool:
    response = httpx.post(f"{server.url}/v2/models/iris/infer", headers=server.auth, json=GOOD)
    ok = response.status_code == 200 and response.json()["outputs"][0]["data"] == [0]
    if not ok:
        print(f"inference failed: {response.status_code} {response.text}")
    return ok


def replica_pids(server) -> list[int]:
    return [int(r["pid"]) for r in server.deployment("iris")["replicas"]]


def alive(pid: int) -> bool:
    """Running, not exited-and-waiting-to-be-reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_restart_brings_deployments_back_without_a_push(server_factory, iris_file) -> None:
    server = server_factory()
    server.start()
    server.push(iris_file)
    assert server.cli("deploy", "iris", "--replicas", "2").returncode == 0
    assert infer_ok(server)
    old_pids = replica_pids(server)

    server.stop()  # a clean stop takes its replicas with it
    assert not any(alive(pid) for pid in old_pids)

    server.start()
    wait_for(lambda: server.deployment("iris")["state"] == "ready", timeout=60)
    assert infer_ok(server)
    assert set(replica_pids(server)).isdisjoint(old_pids)


def test_kill_9_during_a_push_leaves_a_consistent_registry(server_factory, iris_file) -> None:
    server = server_factory()
    server.start()
    server.push(iris_file)
    assert server.cli("deploy", "iris").returncode == 0
    staging = server.home / "blobs" / "staging"

    # an upload that announces 64 MiB, sends 2 MiB, and is cut off by the crash
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        head = (
            f"POST /api/v1/models/iris/versions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Authorization: Bearer {server.key}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {64 << 20}\r\n\r\n"
        )
        conn.sendall(head.encode() + os.urandom(2 << 20))
        wait_for(lambda: any(staging.iterdir()), timeout=30)
        old_pids = replica_pids(server)
        server.stop(signal.SIGKILL)

    # the orphaned replicas notice and exit by themselves
    wait_for(lambda: not any(alive(p) for p in old_pids), timeout=30)

    server.start()
    assert list(staging.iterdir()) == []
    models = server.cli("models", "show", "iris", "--json")
    versions = json.loads(models.stdout)["versions"]
    assert [v["version"] for v in versions] == [1]
    blobs = {p.name for p in (server.home / "blobs" / "sha256").glob("*/*")}
    assert blobs == {versions[0]["digest"]}
    wait_for(lambda: server.deployment("iris")["state"] == "ready", timeout=60)
    assert infer_ok(server)
    # and the next push gets the next number
    server.push(iris_file, "iris", "--allow-duplicate")
    assert server.cli("models", "show", "iris:2").returncode == 0


def test_a_replica_that_dies_is_replaced(server_factory, iris_file) -> None:
    server = server_factory()
    server.start()
    server.push(iris_file)
    assert server.cli("deploy", "iris").returncode == 0
    [pid] = replica_pids(server)
    os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        info = server.deployment("iris")  # one snapshot: state and pids from the same moment
        pids = [r["pid"] for r in info["replicas"]]
        return info["state"] == "ready" and pids != [pid]

    wait_for(replaced, timeout=60)
    assert infer_ok(server)


def test_a_failed_rollout_still_serves_the_last_good_version_after_kill_9(
    server_factory, iris_file, tmp_path
) -> None:
    import onnx

    server = server_factory()
    server.start()
    server.push(iris_file)
    assert server.cli("deploy", "iris").returncode == 0
    wait_for(lambda: server.deployment("iris")["state"] == "ready", timeout=60)
    # v2: other bytes (one more metadata entry) whose stored blob is then damaged on disk, so
    # each of its replicas fails verification and exits: a crash loop
    model = onnx.load_from_string(iris_file.read_bytes())
    onnx.helper.set_model_props(model, {"build": "2"})
    second = tmp_path / "iris2.onnx"
    second.write_bytes(model.SerializeToString())
    server.push(second)
    model_info = httpx.get(f"{server.url}/api/v1/models/iris", headers=server.auth).json()
    digest = model_info["versions"][1]["digest"]
    blob = next((server.home / "blobs" / "sha256").glob(f"*/{digest}"))
    damaged = bytearray(blob.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    assert server.cli("deploy", "iris:2", "--no-wait").returncode == 0

    def served_by(version: str) -> bool:
        response = httpx.post(f"{server.url}/v2/models/iris/infer", headers=server.auth,
                              json=GOOD, timeout=10)  # fmt: skip
        return response.status_code == 200 and response.json()["model_version"] == version

    def v2_failed() -> bool:
        return any(e["action"] == "stop" for e in server.deployment("iris")["events"])

    wait_for(v2_failed, timeout=60)
    assert served_by("1")

    server.stop(signal.SIGKILL)  # the server dies; its replicas follow it
    server.start()
    wait_for(lambda: served_by("1"), timeout=60)
    assert server.deployment("iris")["version"] == 2  # still what was asked for
