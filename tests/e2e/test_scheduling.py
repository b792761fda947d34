"""Compute allocation as a user sees it: capacity and pending reasons, rolling updates without
failed requests, a version that cannot load, scale to zero and back. Real servers, real CLI."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from modelplane.testing import IRIS_REQUEST, mlp_onnx, wait_for

pytestmark = pytest.mark.e2e

GOOD = IRIS_REQUEST


def info(server, name: str = "iris") -> dict[str, Any]:
    return server.deployment(name)  # type: ignore[no-any-return]


def test_capacity_pending_reasons_and_lowering_the_request(server_factory, iris_file) -> None:
    server = server_factory(MODELPLANE_SCHEDULER__NODE_CPUS="2")  # this machine's 2 cores
    server.start()
    server.push(iris_file)

    too_big = server.cli("deploy", "iris", "--replicas", "3", "--cpu", "4")
    assert too_big.returncode != 0
    assert "needs 4 CPU per replica; the largest free is 2 CPU on" in too_big.stderr
    status = server.cli("deployments", "status", "iris")
    assert "pending (3): needs 4 CPU per replica" in status.stdout, status.stdout

    # deploy waits while replicas start, then says what could not be placed, and why
    some = server.cli("deploy", "iris", "--replicas", "3", "--cpu", "1", "--timeout", "90")
    assert some.returncode == 6, some.stdout + some.stderr
    assert "iris: 2/3 ready, 1 replica(s) pending: needs 1 CPU per replica" in some.stderr

    def two_placed_one_pending() -> bool:
        d = info(server)
        return d["ready_replicas"] == 2 and len(d["pending"]) == 1

    wait_for(two_placed_one_pending, timeout=60)
    assert info(server)["pending"] == ["needs 1 CPU per replica; the largest free is 0 CPU on "
                                       f"{info(server)['replicas'][0]['node']}"]  # fmt: skip
    nodes = json.loads(server.cli("nodes", "list", "--json").stdout)
    assert len(nodes) == 1
    assert nodes[0]["allocated"]["cpu"] == 2
    assert nodes[0]["capacity"]["cpu"] == 2
    assert nodes[0]["replicas"] == 2

    lowered = server.cli("deploy", "iris", "--replicas", "3", "--cpu", "0.5", "--timeout", "90")
    assert lowered.returncode == 0, lowered.stderr  # three replicas of the new request ready
    d = info(server)
    assert d["pending"] == []
    assert d["ready_replicas"] == 3
    # the last old replica drains once it has no request left: then all three are the new ones
    wait_for(lambda: len(info(server)["replicas"]) == 3, timeout=30)
    d = info(server)
    assert sorted(r["state"] for r in d["replicas"]) == ["ready"] * 3
    assert all(r["resources"]["cpu"] == 0.5 for r in d["replicas"])
    assert all(r["placement"].startswith(r["node"]) for r in d["replicas"])
    table = server.cli("nodes", "list").stdout
    assert "1.5/2" in table, table


async def _steady_load(server, stop: asyncio.Event) -> list[Any]:
    """Requests one after another on 4 connections until ``stop``; every reply or error."""
    replies: list[Any] = []
    async with httpx.AsyncClient(base_url=server.url, headers=server.auth, timeout=30) as client:

        async def worker() -> None:
            while not stop.is_set():
                try:
                    replies.append(await client.post("/v2/models/iris/infer", json=GOOD))
                except httpx.HTTPError as exc:
                    replies.append(exc)

        await asyncio.gather(*(worker() for _ in range(4)))
    return replies


def test_rolling_update_fails_no_request_and_a_broken_version_leaves_the_old_serving(
    server_factory, iris_file, tmp_path
) -> None:
    server = server_factory()
    server.start()
    server.push(iris_file)
    server.push(iris_file, "iris", "--allow-duplicate")  # version 2: the same bytes
    assert server.cli("deploy", "iris:1", "--replicas", "2").returncode == 0

    states: list[str] = []  # what `deployments status` says throughout

    async def watch(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=server.url, headers=server.auth, timeout=30) as c:
            while not stop.is_set():
                states.append((await c.get("/api/v1/deployments/iris")).json()["state"])
                await asyncio.sleep(0.1)

    async def update_under_load() -> list[Any]:
        stop = asyncio.Event()
        load = asyncio.create_task(_steady_load(server, stop))
        watcher = asyncio.create_task(watch(stop))
        await asyncio.sleep(1.0)
        # a new version alone: the replica count and everything else is kept
        deployed = await asyncio.to_thread(server.cli, "deploy", "iris:2")
        assert deployed.returncode == 0, deployed.stderr

        def only_v2() -> bool:
            replicas = info(server)["replicas"]
            return {r["version"] for r in replicas} == {2} and len(replicas) == 2

        await asyncio.to_thread(wait_for, only_v2, 60)
        await asyncio.sleep(1.0)
        stop.set()
        await watcher
        return await load

    replies = asyncio.run(update_under_load())
    codes = Counter(r.status_code if isinstance(r, httpx.Response) else repr(r) for r in replies)
    versions = Counter(r.json()["model_version"] for r in replies if isinstance(r, httpx.Response)
                       and r.status_code == 200)  # fmt: skip
    print(f"\nrolling update under load: {codes}, served by versions {versions}")
    assert codes == {200: len(replies)}, codes
    assert versions.keys() == {"1", "2"}
    # the old version serves while the new one starts: "updating", never pending or degraded
    assert set(states) == {"ready", "updating"}, Counter(states)
    events = [e["action"] for e in info(server)["events"]]
    assert "drain" in events

    # a version whose artifact cannot load: its replicas fail, version 2 keeps serving
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(mlp_onnx((4, 8, 3)))
    server.push(broken)
    digest = server.cli("models", "show", "iris:3", "--json")
    blob = json.loads(digest.stdout)["digest"]
    path = server.home / "blobs" / "sha256" / blob[:2] / blob
    path.chmod(0o600)
    path.write_bytes(b"not the pushed bytes")
    failed = server.cli("deploy", "iris:3", "--replicas", "2", "--timeout", "15")
    assert failed.returncode == 6, failed.stdout + failed.stderr  # unavailable, not a usage error
    response = httpx.post(f"{server.url}/v2/models/iris/infer", headers=server.auth, json=GOOD,
                          timeout=30)  # fmt: skip
    assert response.status_code == 200
    assert response.json()["model_version"] == "2"
    wait_for(lambda: "digest" in (info(server)["last_failure"] or ""), timeout=60)


def test_scale_to_zero_and_back_on_the_first_request(server_factory, iris_file) -> None:
    server = server_factory()
    server.start()
    server.push(iris_file)
    deployed = server.cli("deploy", "iris", "--min", "0", "--max", "3", "--downscale-delay", "3")
    assert deployed.returncode == 0, deployed.stderr
    d = info(server)
    assert d["state"] == "scaled to zero"
    assert d["replicas"] == []

    started = time.monotonic()
    first = httpx.post(f"{server.url}/v2/models/iris/infer", headers=server.auth, json=GOOD,
                       timeout=90)  # fmt: skip
    cold = time.monotonic() - started
    assert first.status_code == 200, first.text
    assert first.json()["outputs"][0]["data"] == [0]
    print(f"\ncold start from zero replicas: first request answered in {cold:.1f}s")
    assert len(info(server)["replicas"]) == 1

    wait_for(lambda: info(server)["replicas"] == [], timeout=60)
    d = info(server)
    assert d["state"] == "scaled to zero"
    assert [e["reason"].split(" (")[0] for e in d["events"] if e["action"] == "scale"] == [
        "0 -> 1 replicas",
        "1 -> 0 replicas",
    ]


def test_a_cold_start_with_no_room_fails_at_once_with_the_reason(server_factory, iris_file) -> None:
    server = server_factory(MODELPLANE_SCHEDULER__NODE_CPUS="0.25")  # room for one replica
    server.start()
    server.push(iris_file)
    assert server.cli("deploy", "iris").returncode == 0  # takes the node's whole 0.25 CPU
    lazy = server.cli("deploy", "iris", "--name", "lazy", "--min", "0", "--max", "2")
    assert lazy.returncode == 0, lazy.stderr
    assert "scaled to zero" in lazy.stdout

    started = time.monotonic()
    predicted = server.cli("predict", "lazy", "--input", '{"float_input": [[5.1, 3.5, 1.4, 0.2]]}')
    waited = time.monotonic() - started
    assert predicted.returncode == 6, predicted.stdout + predicted.stderr
    assert "scaled to zero and its replica cannot be placed: needs 0.25 CPU" in predicted.stderr
    assert waited < 20  # not the cold-start timeout: the reason is known after one reconcile
    # the deployment that has the room serves on
    assert server.cli("predict", "iris", "--input", '{"float_input": [[5.1, 3.5, 1.4, 0.2]]}'
                      ).returncode == 0  # fmt: skip


def test_draining_the_only_node_keeps_serving_and_says_why(server_factory, iris_file) -> None:
    server = server_factory()
    server.start()
    server.push(iris_file)
    assert server.cli("deploy", "iris").returncode == 0
    [node] = json.loads(server.cli("nodes", "list", "--json").stdout)
    drained = server.cli("nodes", "drain", node["id"], "--reason", "kernel upgrade")
    assert drained.returncode == 0, drained.stderr
    assert "draining" in drained.stdout

    def waiting() -> bool:
        return bool(
            info(server)["pending"]
            == ["needs 0.25 CPU, 512 MB per replica; no node takes replicas (nodes are draining)"]
        )

    wait_for(waiting, timeout=30)
    response = httpx.post(f"{server.url}/v2/models/iris/infer", headers=server.auth, json=GOOD)
    assert response.status_code == 200  # nowhere to move to: the replica keeps serving
    listed = server.cli("nodes", "list").stdout
    assert "draining" in listed
    assert "kernel upgrade" in listed
    assert server.cli("nodes", "uncordon", node["id"]).returncode == 0
    wait_for(lambda: info(server)["pending"] == [], timeout=30)
    assert info(server)["state"] == "ready"
