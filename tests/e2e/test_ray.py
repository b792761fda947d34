"""The Ray executor on a real two-node Ray cluster on this machine (loopback addresses 127.0.0.2
and 127.0.0.3): spread placement, a lost node's replica placed again, adoption after a crash of
``serve``, nothing left behind. Ray's processes are found and stopped by process id, so nothing
else on the machine running Ray is touched."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from modelplane.testing import IRIS_REQUEST, RayCluster, wait_for

pytestmark = pytest.mark.e2e

GOOD = IRIS_REQUEST


def replica_processes(home: Path) -> list[psutil.Process]:
    """Live replica processes started on Ray for the server at ``home`` (their artifact is
    under it); exited ones not yet reaped do not count."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if ("modelplane.serving.replica" in cmdline and "--port-file" in cmdline
                and any(str(home) in arg for arg in cmdline)
                and proc.info["status"] != psutil.STATUS_ZOMBIE):  # fmt: skip
            found.append(proc)
    return found


def test_two_node_ray_cluster(ray_cluster: RayCluster, server_factory, iris_file) -> None:
    server = server_factory()
    args = ("--executor", "ray", "--ray-address", ray_cluster.address)
    server.start(*args)
    assert server.cli("push", str(iris_file), "--name", "iris").returncode == 0

    wait_for(lambda: len(_nodes(server)) == 2, timeout=60)  # once serve has joined the cluster
    nodes = _nodes(server)
    assert sorted(n["address"] for n in nodes) == ["127.0.0.2", "127.0.0.3"]
    assert {n["zone"] for n in nodes} == {"zone-a", "zone-b"}
    assert sorted(n["cost_per_hour"] for n in nodes) == [0.1, 0.2]
    assert all(n["capacity"]["cpu"] == 2 and n["state"] == "healthy" for n in nodes)

    deployed = server.cli("deploy", "iris", "--replicas", "2", "--cpu", "1", "--timeout", "120",
                          "--payload-log-rate", "1")  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    replicas = _deployment(server)["replicas"]
    by_node = {n["id"]: n for n in _nodes(server)}
    assert len({r["node"] for r in replicas}) == 2  # one per node: losing one never stops it
    assert all(by_node[r["node"]]["allocated"]["cpu"] == 1 for r in replicas)
    assert _infer(server)
    # replica logs are collected from the nodes: the request id in the response finds its line
    sent = httpx.post(f"{server.url}/v2/models/iris/infer", json=GOOD, timeout=30,
                      headers={**server.auth, "X-Request-Id": "ray-request-1"})  # fmt: skip
    assert sent.headers["x-request-id"] == "ray-request-1"

    def logged() -> bool:
        found = server.cli("deployments", "logs", "iris", "--json").stdout
        return '"request_id": "ray-request-1"' in found

    wait_for(logged, timeout=30)
    # so are their sampled payloads, beside the logs as on one machine
    folder = server.home / "logs" / "iris"
    wait_for(lambda: any(b"ray-request-1" in p.read_bytes()
                         for p in folder.glob("*.payloads.jsonl")), timeout=30)  # fmt: skip
    # replicas on Ray report their own usage, and that of their node
    metrics = httpx.get(f"{server.url}/metrics", headers=server.auth, timeout=30).text
    for r in replicas:
        assert f'modelplane_replica_resident_memory_bytes{{model="iris",replica="{r["id"]}"' in (
            metrics.replace(',version="1"', "")
        ), metrics
        assert f'modelplane_node_memory_total_bytes{{node="{r["node"]}"}}' in metrics

    # lose the second node: its replica comes back on the first within the health bound
    lost_ip = "127.0.0.3"
    lost = next(n["id"] for n in _nodes(server) if n["address"] == lost_ip)
    ray_cluster.raylet(lost_ip).kill()
    killed = time.monotonic()

    def replaced() -> bool:
        d = _deployment(server)
        ready = [r for r in d["replicas"] if r["state"] == "ready"]
        return len(ready) == 2 and all(r["node"] != lost for r in ready)

    wait_for(replaced, timeout=90, interval=0.5)
    took = time.monotonic() - killed
    print(f"\nlost node {lost_ip}: replica serving again on the other node after {took:.1f}s")
    assert {n["id"]: n["state"] for n in _nodes(server)}[lost] == "lost"
    assert _infer(server)
    events = [e["reason"] for e in _deployment(server)["events"] if e["action"] == "stop"]
    assert f"node {lost} lost" in events

    # the lost node's replica process goes with its actor's worker: nothing left behind there
    wait_for(lambda: len(replica_processes(server.home)) == 2, timeout=60)
    print(f"lost node's replica process gone after {time.monotonic() - killed:.1f}s")

    # serve dies outright: the next one adopts the running replicas instead of leaking them
    before = sorted(r["id"] for r in _deployment(server)["replicas"])
    server.stop(signal.SIGKILL)
    assert len(replica_processes(server.home)) == 2  # still running on Ray
    server.start(*args)
    wait_for(lambda: _deployment(server)["ready_replicas"] == 2, timeout=60)
    assert sorted(r["id"] for r in _deployment(server)["replicas"]) == before
    assert _infer(server)

    # undeploy removes the actors and their replica processes
    assert server.cli("undeploy", "iris").returncode == 0
    wait_for(lambda: not replica_processes(server.home), timeout=60)
    wait_for(lambda: all(n["replicas"] == 0 for n in _nodes(server) if n["state"] == "healthy"),
             timeout=30)  # fmt: skip


def _nodes(server) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/api/v1/nodes", headers=server.auth, timeout=30)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def _deployment(server) -> dict[str, Any]:
    return server.deployment("iris")  # type: ignore[no-any-return]


def _infer(server) -> bool:
    response = httpx.post(f"{server.url}/v2/models/iris/infer", headers=server.auth, json=GOOD,
                          timeout=30)  # fmt: skip
    return response.status_code == 200 and response.json()["outputs"][0]["data"] == [0]
