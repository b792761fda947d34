"""The gateway-replica channel across machines: TLS with the server's replica CA, over loopback
TCP, with a real replica core. Plain TCP and other CAs are refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from modelplane.protocol import frames
from modelplane.protocol.v2 import Limits
from modelplane.runtime.batching import BatchingConfig, BatchingRuntime
from modelplane.runtime.onnx import OnnxRuntime
from modelplane.security.replica_tls import ReplicaAuthority, derive, replica_server_context
from modelplane.serving.dataplane import DataPlane
from modelplane.serving.replica_client import ReplicaConnection, ReplicaGone, probe
from modelplane.serving.replica_server import ReplicaProtocol
from modelplane.testing import identity_onnx

TOKEN = "replica-token"
BODY = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                 "data": [1.5, 2.5]}]})  # fmt: skip


@pytest.fixture
def authority(tmp_path: Path) -> ReplicaAuthority:
    return ReplicaAuthority.load_or_create(tmp_path / "replica-ca.pem")


async def listen(tmp_path: Path, authority: ReplicaAuthority) -> asyncio.Server:
    """A replica core listening with TLS on a loopback port, certified by ``authority``."""
    path = tmp_path / "m.onnx"
    path.write_bytes(identity_onnx("FP32"))
    plane = DataPlane("m", "1", BatchingRuntime(OnnxRuntime(path), BatchingConfig()), Limits(1000))
    plane.load()
    context = replica_server_context(*authority.issue("r1"))
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: ReplicaProtocol(plane, TOKEN.encode()), "127.0.0.1", 0, ssl=context
    )


@pytest.fixture
async def replica(tmp_path: Path, authority: ReplicaAuthority) -> AsyncIterator[str]:
    """A replica core listening with TLS on a loopback port; yields its ``tls://`` URL."""
    server = await listen(tmp_path, authority)
    async with server:
        yield f"tls://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        server.close()


async def test_gateway_infers_over_tls(replica: str, authority: ReplicaAuthority) -> None:
    connection = await ReplicaConnection.connect(replica, TOKEN, tls=authority.client_context())
    try:
        reply = await connection.request(frames.INFER, BODY, None, 5000, 10.0, "req-1")
    finally:
        connection.close()
    assert reply.status == 200
    assert orjson.loads(reply.payload)["outputs"][0]["data"] == [1.5, 2.5]
    assert await probe(replica, TOKEN, 5.0, authority.client_context())


async def test_plain_tcp_and_strangers_are_refused(
    replica: str, authority: ReplicaAuthority, tmp_path: Path
) -> None:
    # no TLS context: the client will not send the token in the clear
    with pytest.raises(ReplicaGone, match="needs the executor's TLS context"):
        await ReplicaConnection.connect(replica, TOKEN)
    # plain TCP to the TLS port: the replica never answers the HELLO
    plain = replica.replace("tls://", "tcp://")
    assert not await probe(plain, TOKEN, 2.0)
    # a replica certified by another server's CA is not trusted
    stranger = ReplicaAuthority.load_or_create(tmp_path / "other-ca.pem")
    with pytest.raises(ReplicaGone, match="cannot connect"):
        await ReplicaConnection.connect(replica, TOKEN, 2.0, stranger.client_context())
    # TLS but the wrong token: refused as before
    assert not await probe(replica, "not-the-token", 2.0, authority.client_context())


async def test_servers_sharing_a_secret_trust_each_others_replicas(tmp_path: Path) -> None:
    """Every server sharing a database derives the same authority from the master key: a
    replica certified by one is trusted by another (and adopted by a new leader); an
    authority derived from another secret is not."""
    seed = derive(b"m" * 32, b"replica CA")
    leader, follower = ReplicaAuthority.derived(seed), ReplicaAuthority.derived(seed)
    server = await listen(tmp_path, leader)
    url = f"tls://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        assert await probe(url, TOKEN, 5.0, follower.client_context())
        other = ReplicaAuthority.derived(derive(b"n" * 32, b"replica CA"))
        assert not await probe(url, TOKEN, 2.0, other.client_context())
        server.close()
