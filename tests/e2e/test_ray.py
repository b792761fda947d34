"""The Ray executor on a real two-node Ray cluster on this machine (loopback addresses 127.0.0.2
and 127.0.0.3): spread placement, a lost node's replica placed again, adoption after a crash of
``serve``, nothing left behind. Ray's processes are found and stopped by process id, so nothing
else on the machine running Ray is touched."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from modelplane.testing import free_port, wait_for

pytestmark = pytest.mark.e2e

RAY = Path(sys.executable).parent / "ray"
GOOD = {"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
                    "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip


@dataclass
class RayCluster:
    temp: Path
    port: int = field(default_factory=free_port)

    @property
    def address(self) -> str:
        return f"127.0.0.2:{self.port}"

    def start_node(self, ip: str, zone: str, cost: str, head: bool = False) -> None:
        where = ["--head", "--port", str(self.port)] if head else ["--address", self.address]
        result = subprocess.run(
            [str(RAY), "start", *where, "--node-ip-address", ip, "--num-cpus", "2",
             "--memory", str(2 * 1024**3), "--object-store-memory", str(200 * 1024**2),
             "--labels", f"zone={zone},instance_type=test.small,cost_per_hour={cost}",
             "--temp-dir", str(self.temp), "--disable-usage-stats",
             *(["--include-dashboard", "false"] if head else [])],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: those naming its temp dir, and their descendants
        (workers rename themselves ``ray::...``, replicas are their children)."""
        roots = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(str(self.temp) in part for part in proc.info["cmdline"] or ()):
                    roots.append(proc)
            except psutil.Error:
                continue
        found = {p.pid: p for p in roots}
        for root in roots:
            try:
                found.update({c.pid: c for c in root.children(recursive=True)})
            except psutil.Error:
                continue
        return list(found.values())

    def raylet(self, ip: str) -> psutil.Process:
        for proc in self.processes():
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if "raylet/raylet" in cmdline and f"--node_ip_address={ip}" in cmdline:
                return proc
        raise AssertionError(f"no raylet for {ip}")

    def stop(self) -> None:
        procs = self.processes()
        for proc in procs:
            try:
                proc.terminate()
            except psutil.Error:
                continue
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                continue


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    # a short path: Ray's Unix sockets live under it
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="mpray-", dir="/tmp")))
    try:
        cluster.start_node("127.0.0.2", "zone-a", "0.10", head=True)
        cluster.start_node("127.0.0.3", "zone-b", "0.20")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.temp, ignore_errors=True)


def replica_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "modelplane.serving.replica" in cmdline and "--port-file" in cmdline:
            found.append(proc)
    return found


def test_two_node_ray_cluster(ray_cluster: RayCluster, server_factory, iris_file) -> None:
    server = server_factory()
    args = ("--executor", "ray", "--ray-address", ray_cluster.address)
    server.start(*args)
    assert server.cli("push", str(iris_file), "--name", "iris").returncode == 0

    nodes = _nodes(server)
    assert sorted(n["address"] for n in nodes) == ["127.0.0.2", "127.0.0.3"]
    assert {n["zone"] for n in nodes} == {"zone-a", "zone-b"}
    assert sorted(n["cost_per_hour"] for n in nodes) == [0.1, 0.2]
    assert all(n["capacity"]["cpu"] == 2 and n["state"] == "healthy" for n in nodes)

    deployed = server.cli("deploy", "iris", "--replicas", "2", "--cpu", "1", "--timeout", "120")
    assert deployed.returncode == 0, deployed.stderr
    replicas = _deployment(server)["replicas"]
    by_node = {n["id"]: n for n in _nodes(server)}
    assert len({r["node"] for r in replicas}) == 2  # one per node: losing one never stops it
    assert all(by_node[r["node"]]["allocated"]["cpu"] == 1 for r in replicas)
    assert _infer(server)

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

    # serve dies outright: the next one adopts the running replicas instead of leaking them
    before = sorted(r["id"] for r in _deployment(server)["replicas"])
    server.stop(signal.SIGKILL)
    assert len(replica_processes()) == 2  # still running on Ray
    server.start(*args)
    wait_for(lambda: _deployment(server)["ready_replicas"] == 2, timeout=60)
    assert sorted(r["id"] for r in _deployment(server)["replicas"]) == before
    assert _infer(server)

    # undeploy removes the actors and their replica processes
    assert server.cli("undeploy", "iris").returncode == 0
    wait_for(lambda: not replica_processes(), timeout=60)
    assert all(n["replicas"] == 0 for n in _nodes(server) if n["state"] == "healthy")


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
