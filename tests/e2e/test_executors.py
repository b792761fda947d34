"""The executor contract, run the same against both executors: nodes with capacity, a replica
started on the node asked for, ready and answering inference, a crash reported as failed, and
nothing left after stop. The local executor runs processes here; the Ray one on a real two-node
Ray cluster."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import psutil
import pytest

from modelplane.cluster.executor import ReplicaExecutor, ReplicaSpec
from modelplane.domain import NodeState, Replica, ReplicaState, Resources
from modelplane.protocol import frames
from modelplane.server import make_executor
from modelplane.serving.replica_client import ReplicaConnection, probe
from modelplane.settings import SchedulerSettings, Settings
from modelplane.testing import IRIS_REQUEST

pytestmark = pytest.mark.e2e

BODY = orjson.dumps(IRIS_REQUEST)


@pytest.fixture(params=["local", "ray"])
def kind(request: pytest.FixtureRequest) -> Iterator[tuple[str, str | None]]:
    if request.param == "local":
        yield ("local", None)
        return
    cluster = request.getfixturevalue("ray_cluster")
    yield ("ray", cluster.address)


@pytest.fixture
async def executor(kind, tmp_path: Path) -> AsyncIterator[ReplicaExecutor]:
    name, address = kind
    scheduler = SchedulerSettings(executor=name, ray_address=address)
    settings = Settings(home=tmp_path / "home", scheduler=scheduler)
    executor = make_executor(settings)
    yield executor
    await executor.shutdown()


def replica_process(replica_id: str) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "modelplane.serving.replica" in cmdline and replica_id in cmdline:
            return proc
    return None


async def until(executor: ReplicaExecutor, replica_id: str, state: ReplicaState) -> Replica:
    for _ in range(600):
        found = {r.id: r for r in await executor.observe()}
        replica = found.get(replica_id)
        if replica is not None and replica.state == state:
            return replica
        await asyncio.sleep(0.2)
    raise AssertionError(f"{replica_id} never became {state}: {found.get(replica_id)}")


async def test_executor_contract(executor: ReplicaExecutor, tmp_path: Path, iris_bytes) -> None:
    nodes = await executor.nodes()
    assert nodes
    assert all(n.state == NodeState.HEALTHY and n.capacity.cpu > 0 for n in nodes)
    node = nodes[-1]
    artifact = tmp_path / "iris.onnx"
    artifact.write_bytes(iris_bytes)
    spec = ReplicaSpec(
        replica_id="contract01", deployment="iris", model="iris", version=1, artifact=artifact,
        digest=hashlib.sha256(iris_bytes).hexdigest(), revision="r1", node=node.id,
        resources=Resources(0.5, 256),
    )  # fmt: skip
    started = await executor.start(spec)
    assert started.state == ReplicaState.STARTING
    ready = await until(executor, spec.replica_id, ReplicaState.READY)
    assert ready.node == node.id
    assert ready.resources == Resources(0.5, 256)
    assert ready.revision == "r1"

    # on other machines (Ray) only TLS with the executor's CA: encrypted, the replica checked
    assert ready.url.startswith("tls://" if executor.replica_tls else "unix:")
    connection = await ReplicaConnection.connect(
        ready.url, executor.token, tls=executor.replica_tls
    )
    reply = await connection.request(frames.INFER, BODY, None, 5000, 10.0, "req-1")
    connection.close()
    assert reply.status == 200
    assert orjson.loads(reply.payload)["outputs"][0]["data"] == [0]
    # a wrong token is refused
    assert not await probe(ready.url, "not-the-token", tls=executor.replica_tls)

    # a crash is reported as failed, with the reason
    proc = replica_process(spec.replica_id)
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    failed = await until(executor, spec.replica_id, ReplicaState.FAILED)
    assert "exited" in failed.message or "died" in failed.message.lower(), failed.message

    # stop removes it; no process is left behind
    await executor.stop(spec.replica_id)
    assert spec.replica_id not in {r.id for r in await executor.observe()}
    second = ReplicaSpec(
        replica_id="contract02", deployment="iris", model="iris", version=1, artifact=artifact,
        digest=spec.digest, revision="r1", node=node.id, resources=Resources(0.5, 256),
    )  # fmt: skip
    await executor.start(second)
    await until(executor, second.replica_id, ReplicaState.READY)
    await executor.stop(second.replica_id)
    for _ in range(150):  # up to 30 s
        if replica_process(second.replica_id) is None:
            break
        await asyncio.sleep(0.2)
    assert replica_process(second.replica_id) is None
