"""Two ``serve`` processes sharing one PostgreSQL, one S3 bucket and one master key (different
homes and ports, as two machines would be): one leads and runs the controller, both serve what
it deploys, and when the leader is killed the other takes over and serves again."""

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
from tests.faults.conftest import Load

from modelplane.testing import IRIS_REQUEST, wait_for

pytestmark = pytest.mark.e2e


def status(server) -> dict[str, Any]:
    result = server.cli("cluster", "status", "--json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def serves(server) -> bool:
    try:
        reply = httpx.post(f"{server.url}/v2/models/iris/infer", json=IRIS_REQUEST,
                           headers=server.auth, timeout=5)  # fmt: skip
    except httpx.HTTPError:
        return False
    return reply.status_code == 200


def test_two_servers_one_leader_and_a_handover(server_factory, postgres, s3, iris_file) -> None:
    shared = {
        "MODELPLANE_DATABASE_URL": postgres.database(),
        "MODELPLANE_STORAGE_URL": f"s3://{s3.bucket(f'models-{uuid.uuid4().hex[:8]}')}/prod",
        "MODELPLANE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "MODELPLANE_SCHEDULER__RECONCILE_INTERVAL_S": "0.5",
        **s3.env,
    }
    first = server_factory(**shared)
    first.start()
    second = server_factory(**shared)
    second.home.mkdir(parents=True)
    (second.home / "admin.key").write_text(first.key + "\n")  # one key store: the database's
    second.start()

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
    assert second.deployment("iris")["ready_replicas"] == 2
    shown = second.cli("deployments", "status", "iris")
    assert shown.stdout.count("ready") >= 2, shown.stdout

    # the leader dies (kill -9; its local replicas follow it): the other takes over
    with Load(second) as load:
        time.sleep(1)
        first.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: status(second)["leader"] not in (None, leader["id"]), timeout=15)
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
    replicas = second.deployment("iris")["replicas"]
    assert len(replicas) == 3
    assert next(s for s in status(second)["servers"] if s["this"])["leader"]
