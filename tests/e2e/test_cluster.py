"""Two ``serve`` processes sharing one PostgreSQL, one S3 bucket and one master key (different
homes and ports, as two machines would be): one leads and runs the controller, both serve what
it deploys; a killed follower costs the leader's clients nothing, and when the leader is killed
the other takes over and serves again."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import uuid
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import Server
from tests.faults.conftest import Load

from modelplane.testing import IRIS_REQUEST, wait_for

pytestmark = pytest.mark.e2e


def status(server) -> dict[str, Any]:
    result = server.cli("cluster", "status", "--json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def leader_seen(server) -> str | None:
    """The leader ``server`` sees, through the API (quicker to ask than starting the CLI)."""
    reply = httpx.get(f"{server.url}/api/v1/cluster", headers=server.auth, timeout=5)
    leader: str | None = reply.json()["leader"]
    return leader


def info(server: Server) -> dict[str, Any]:
    """The iris deployment as ``server`` shows it."""
    return server.deployment("iris")


def serves(server) -> bool:
    try:
        reply = httpx.post(f"{server.url}/v2/models/iris/infer", json=IRIS_REQUEST,
                           headers=server.auth, timeout=5)  # fmt: skip
    except httpx.HTTPError:
        return False
    return reply.status_code == 200


def start_two(server_factory, postgres, s3, *args: str) -> tuple[Server, Server]:
    """Two servers on one new database and bucket, with one master key; the first leads."""
    shared = {
        "MODELPLANE_DATABASE_URL": postgres.database(),
        "MODELPLANE_STORAGE_URL": f"s3://{s3.bucket(f'models-{uuid.uuid4().hex[:8]}')}/prod",
        "MODELPLANE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "MODELPLANE_SCHEDULER__RECONCILE_INTERVAL_S": "0.5",
        **s3.env,
    }
    first = server_factory(**shared)
    first.start(*args)
    second = server_factory(**shared)
    second.home.mkdir(parents=True)
    (second.home / "admin.key").write_text(first.key + "\n")  # one key store: the database's
    second.start(*args)
    return first, second


def test_two_servers_one_leader_and_a_handover(server_factory, postgres, s3, iris_file) -> None:
    first, second = start_two(server_factory, postgres, s3)

    seen = status(second)
    assert len(seen["servers"]) == 2
    leader = next(s for s in status(first)["servers"] if s["this"])
    assert seen["leader"] == leader["id"]  # the first to start leads
    assert "postgresql+psycopg" in seen["database"]
    assert seen["storage"].startswith("s3://")
    text = second.cli("cluster", "status").stdout
    assert "leader" in text
    assert "follower" in text

    # a deploy through the leader is served by both gateways
    first.push(iris_file)
    assert first.cli("deploy", "iris").returncode == 0
    wait_for(lambda: serves(second), timeout=30)
    assert serves(first)
    # and one through the follower too: it shows what the leader's controller saw
    through_follower = second.cli("deploy", "iris", "--replicas", "2")
    assert through_follower.returncode == 0, through_follower.stderr
    assert info(second)["ready_replicas"] == 2
    shown = second.cli("deployments", "status", "iris")
    assert shown.stdout.count("ready") >= 2, shown.stdout

    # a replica dies (kill -9) under load through both gateways: the gateways retry what it
    # held on the other replica, and the leader replaces it
    replicas = info(first)["replicas"]
    with Load(first) as on_first, Load(second) as on_second:
        time.sleep(1)
        os.kill(replicas[0]["pid"], signal.SIGKILL)
        killed = time.monotonic()

        def replaced() -> bool:
            now = info(second)
            ids = {r["id"] for r in now["replicas"]}
            return now["ready_replicas"] == 2 and replicas[0]["id"] not in ids

        wait_for(replaced, timeout=60, interval=0.2)
        whole_s = time.monotonic() - killed
        time.sleep(1)
    failed = on_first.failures + on_second.failures
    print(f"replica killed: replaced after {whole_s:.1f} s; through two gateways sent "
          f"{on_first.sent + on_second.sent}, failed {len(failed)}")  # fmt: skip
    assert len(failed) <= 8  # at most what the lost replica held (4 connections a gateway)
    assert whole_s <= 30.0

    # a follower dies (kill -9) under load through both gateways: the leader's clients see
    # nothing, and the follower, restarted, is the same server and serves again
    with Load(first) as on_leader, Load(second):
        time.sleep(1)
        second.stop(signal.SIGKILL)
        time.sleep(2)
    print(f"follower killed: through the leader sent {on_leader.sent}, failed "
          f"{len(on_leader.failures)}")  # fmt: skip
    assert on_leader.failures == []
    assert on_leader.sent > 50
    second.start()
    wait_for(lambda: serves(second), timeout=30)
    assert len(status(first)["servers"]) == 2  # its name kept: not a third server
    assert info(second)["ready_replicas"] == 2  # no replica lost or added

    # the leader dies (kill -9; its local replicas follow it): the other takes over
    with Load(second) as load:
        time.sleep(1)
        first.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: leader_seen(second) not in (None, leader["id"]), timeout=15)
        handover_s = time.monotonic() - killed
        wait_for(lambda: load.failures == [] or load.failures[-1][0] < time.monotonic() - 2,
                 timeout=60)  # fmt: skip
        wait_for(lambda: serves(second), timeout=60)
        served_s = time.monotonic() - killed
        time.sleep(1)
    print(f"leader killed: new leader after {handover_s:.1f} s, serving again after "
          f"{served_s:.1f} s; sent {load.sent}, failed {len(load.failures)} in "
          f"{load.window_s:.1f} s")  # fmt: skip
    assert handover_s <= 5.0
    assert served_s <= 60.0
    # the survivor accepts deploys, and runs exactly the replicas it is asked for
    assert second.cli("deploy", "iris", "--replicas", "3").returncode == 0
    replicas = info(second)["replicas"]
    assert len(replicas) == 3
    assert next(s for s in status(second)["servers"] if s["this"])["leader"]


def test_traffic_through_a_follower_wakes_and_scales(server_factory, postgres, s3, iris_file):
    """The leader's autoscaler counts the requests through every server: a request to a
    follower wakes a deployment scaled to zero, and load through the follower alone adds
    replicas."""
    first, second = start_two(server_factory, postgres, s3)
    first.push(iris_file)
    deployed = first.cli("deploy", "iris", "--min", "0", "--max", "2", "--target-ongoing", "1",
                         "--upscale-delay", "1", "--downscale-delay", "3")  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    assert info(second)["state"] == "scaled to zero"

    def known(server: Server) -> bool:  # the follower has the route (within about 0.5 s)
        url = f"{server.url}/v2/models/iris"
        return httpx.get(url, headers=server.auth, timeout=5).status_code == 200

    wait_for(lambda: known(second), timeout=15)

    started = time.monotonic()
    reply = httpx.post(f"{second.url}/v2/models/iris/infer", json=IRIS_REQUEST,
                       headers=second.auth, timeout=90)  # fmt: skip
    cold = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    print(f"woken through the follower: first request answered in {cold:.1f} s")
    assert len(info(second)["replicas"]) == 1
    # through the follower only; 8 clients without pauses keep more than one request in flight
    # (with pauses of 10 ms between 1.5 ms answers they kept about one: a target of 1 at the
    # edge)
    with Load(second, workers=8, pause=0) as load:
        wait_for(lambda: len(info(second)["replicas"]) == 2, timeout=60)
    assert load.failures == []
    wait_for(lambda: info(second)["replicas"] == [], timeout=60)
    reasons = [e["reason"].split(" (")[0] for e in info(second)["events"]
               if e["action"] == "scale"]  # fmt: skip
    assert reasons[:2] == ["0 -> 1 replicas", "1 -> 2 replicas"]
    assert reasons[-1].endswith("-> 0 replicas")


def test_a_clean_stop_of_the_leader_hands_over_without_failures(
    server_factory, postgres, s3, iris_file
) -> None:
    """SIGTERM of the leader, whose replicas stop with it: it gives up the lease, the next
    leader serves its predecessor's replicas until its own are ready, and only then do the old
    ones stop. Clients of the other server see nothing."""
    first, second = start_two(server_factory, postgres, s3)
    first.push(iris_file)
    assert first.cli("deploy", "iris", "--replicas", "2").returncode == 0
    wait_for(lambda: serves(second), timeout=30)
    with Load(second) as load:
        time.sleep(1)
        stopping = time.monotonic()
        first.stop(signal.SIGTERM)
        stopped_s = time.monotonic() - stopping
        time.sleep(1)
    print(f"leader stopped cleanly: exited after {stopped_s:.1f} s; through the other server "
          f"sent {load.sent}, failed {len(load.failures)}")  # fmt: skip
    assert load.failures == []
    assert load.sent > 100
    assert stopped_s < 40  # the handover waits at most the drain timeout (30 s)
    me = next(s for s in status(second)["servers"] if s["this"])
    assert me["leader"]
    assert info(second)["ready_replicas"] == 2
