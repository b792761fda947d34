"""Two ``serve`` processes on one PostgreSQL and one bucket with their replicas on a real
two-node Ray cluster (loopback addresses 127.0.0.2 and 127.0.0.3): the nodes fetch artifacts
from the bucket, Ray's replicas outlive the leader, so when it is killed the survivor's clients
see nothing and the new leader adopts the replicas instead of starting others; and a Ray node
killed under load through both gateways costs only what its replica held."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest
from tests.e2e.test_cluster import leader_seen, serves
from tests.faults.conftest import Load

from modelplane.testing import RayCluster, wait_for
from modelplane.testing import ray_cluster as start_ray_cluster

pytestmark = pytest.mark.e2e


def ready_ids(server) -> list[str]:
    replicas = server.deployment("iris")["replicas"]
    return sorted(r["id"] for r in replicas if r["state"] == "ready")


def replica_processes(cluster: RayCluster) -> int:
    found = 0
    for proc in cluster.processes():
        with contextlib.suppress(psutil.Error):  # exited meanwhile
            cmdline = proc.cmdline()
            found += "modelplane.serving.replica" in cmdline and "--port-file" in cmdline
    return found


@pytest.fixture
def ray_cluster(s3) -> Iterator[RayCluster]:
    """Two Ray nodes that can read the test's bucket (moto's credentials in their environment,
    as real nodes would have theirs)."""
    with start_ray_cluster(2, env=s3.env) as cluster:
        yield cluster


@pytest.mark.timeout(600)
def test_ray_replicas_outlive_the_leader(
    ray_cluster: RayCluster, server_factory, postgres, s3, iris_file
) -> None:
    shared = {
        "MODELPLANE_DATABASE_URL": postgres.database(),
        "MODELPLANE_STORAGE_URL": f"s3://{s3.bucket(f'models-{uuid.uuid4().hex[:8]}')}/prod",
        "MODELPLANE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "MODELPLANE_SCHEDULER__RECONCILE_INTERVAL_S": "0.5",
        **s3.env,
    }
    args = ("--executor", "ray", "--ray-address", ray_cluster.address)
    first = server_factory(**shared)
    first.start(*args)
    second = server_factory(**shared)
    second.home.mkdir(parents=True)
    (second.home / "admin.key").write_text(first.key + "\n")
    second.start(*args)
    leader = leader_seen(second)
    assert leader is not None

    first.push(iris_file)
    deployed = first.cli("deploy", "iris", "--replicas", "2", "--cpu", "1", "--timeout", "180")
    assert deployed.returncode == 0, deployed.stderr
    wait_for(lambda: serves(second), timeout=30)  # the follower reaches the leader's replicas
    before = ready_ids(second)
    assert len(before) == 2
    # the nodes fetched the artifact from the bucket themselves: no server holds a copy
    for server in (first, second):
        assert not any(p.is_file() for p in (server.home / "blobs" / "cache").rglob("*"))
    assert any((first.home / "work" / "artifacts").iterdir())  # the nodes' cache, by digest

    # the leader dies (kill -9): its replicas live on Ray, the survivor keeps serving them
    with Load(second) as load:
        time.sleep(1)
        first.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: leader_seen(second) not in (None, leader), timeout=15)
        handover_s = time.monotonic() - killed
        wait_for(lambda: ready_ids(second) == before, timeout=60, interval=0.5)
        adopted_s = time.monotonic() - killed
        time.sleep(2)
    print(f"leader killed (Ray): new leader after {handover_s:.1f} s, its predecessor's "
          f"replicas adopted after {adopted_s:.1f} s; through the survivor sent {load.sent}, "
          f"failed {len(load.failures)}")  # fmt: skip
    assert handover_s <= 5.0
    assert load.failures == []  # the target: nothing seen by the surviving gateway's clients
    assert load.sent > 100
    # no duplicate, no orphan: the same two replicas, managed by the new leader
    assert replica_processes(ray_cluster) == 2
    assert second.cli("deploy", "iris", "--replicas", "1").returncode == 0
    wait_for(lambda: replica_processes(ray_cluster) == 1, timeout=60)
    assert second.cli("deploy", "iris", "--replicas", "2", "--timeout", "180").returncode == 0

    # the old leader comes back as a follower; a Ray node dies under load through both
    first.start(*args)
    wait_for(lambda: serves(first), timeout=60)
    assert leader_seen(first) == leader_seen(second) != leader
    nodes = {r["node"] for r in second.deployment("iris")["replicas"]}
    assert len(nodes) == 2  # spread: one replica per node
    with Load(first) as on_first, Load(second) as on_second:
        time.sleep(1)
        ray_cluster.raylet("127.0.0.3").kill()
        killed = time.monotonic()

        def whole() -> bool:
            d = second.deployment("iris")
            return d["ready_replicas"] == 2 and len({r["node"] for r in d["replicas"]}) == 1

        wait_for(whole, timeout=90, interval=0.5)
        whole_s = time.monotonic() - killed
        time.sleep(2)
    failed = on_first.failures + on_second.failures
    window = max((t for t, _ in failed), default=killed) - killed
    sent = on_first.sent + on_second.sent
    print(f"Ray node killed: whole again after {whole_s:.1f} s; through two gateways sent "
          f"{sent}, failed {len(failed)} within {window:.1f} s")  # fmt: skip
    assert whole_s <= 60.0
    assert window <= 30.0  # failures only while the lost replica was still routed
    assert serves(first)
    assert serves(second)

    # the leader stops cleanly: its Ray replicas stay, for the other server to adopt
    ids = ready_ids(second)
    old_leader = leader_seen(second)
    with Load(first) as load:
        time.sleep(1)
        second.stop(signal.SIGTERM)
        wait_for(lambda: leader_seen(first) not in (None, old_leader), timeout=15)
        wait_for(lambda: ready_ids(first) == ids, timeout=60, interval=0.5)
        time.sleep(1)
    print(f"leader stopped cleanly (Ray): replicas adopted, through the other server sent "
          f"{load.sent}, failed {len(load.failures)}")  # fmt: skip
    assert load.failures == []
    assert replica_processes(ray_cluster) == 2
