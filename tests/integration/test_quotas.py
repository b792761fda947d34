"""Quotas set through the keys API and enforced on every surface: management routes, V2 REST
and gRPC, with the 429 body and Retry-After, other keys unaffected, /metrics and the audit
trail."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import pytest

from modelplane.protocol.grpc import grpc_predict_v2_pb2 as pb
from modelplane.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from modelplane.server import Platform
from modelplane.serving.grpc import create_grpc_server

pytestmark = pytest.mark.databases


def _client(platform: Platform, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=platform.app),
        base_url="http://127.0.0.1:8000",
        headers={"Authorization": f"Bearer {key}"},
    )


async def _key(api: httpx.AsyncClient, role: str = "viewer", **limits: Any) -> dict[str, Any]:
    made = await api.post("/api/v1/keys", json={"name": "app", "role": role, **limits})
    assert made.status_code == 201, made.text
    key: dict[str, Any] = made.json()
    return key


async def test_limits_are_set_shown_changed_and_removed_through_the_api(api) -> None:
    key = await _key(api, rate_limit=50, burst=100, max_concurrent=8, daily=100000)
    assert (key["rate_limit"], key["burst"], key["max_concurrent"], key["daily"]) == (
        50.0, 100, 8, 100000,
    )  # fmt: skip
    listed = {k["id"]: k for k in (await api.get("/api/v1/keys")).json()}
    assert listed[key["id"]]["daily"] == 100000
    changed = await api.patch(f"/api/v1/keys/{key['id']}", json={"rate_limit": 5, "daily": 0})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["rate_limit"], body["burst"], body["max_concurrent"], body["daily"]) == (
        5.0, 100, 8, None,
    )  # fmt: skip
    removed = await api.patch(f"/api/v1/keys/{key['id']}", json={"rate_limit": 0})
    assert (removed.json()["rate_limit"], removed.json()["burst"]) == (None, None)


@pytest.mark.parametrize(
    "limits",
    [{"rate_limit": -1}, {"burst": 10}, {"max_concurrent": 0}, {"daily": 1.5}],
)
async def test_invalid_limits_are_refused_with_an_example(api, limits) -> None:
    made = await api.post("/api/v1/keys", json={"name": "x", "role": "invoker", **limits})
    assert made.status_code == 400, made.text
    assert made.json()["code"] == "invalid_argument"


async def test_over_the_rate_answers_429_with_retry_after_and_others_are_unaffected(
    api, platform: Platform
) -> None:
    limited = await _key(api, rate_limit=0.5, burst=2)  # 2 at once, then one per 2 s
    other = await _key(api)
    async with _client(platform, limited["secret"]) as client:
        codes = [(await client.get("/api/v1/models")).status_code for _ in range(2)]
        assert codes == [200, 200]
        refused = await client.get("/api/v1/models")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "2"
        body = refused.json()
        assert set(body) == {"error", "code"}
        assert body["code"] == "resource_exhausted"
        assert "0.5 requests per second (burst 2)" in body["error"]
        assert f"modelplane keys update {limited['id']} --rate-limit" in body["error"]
        inference = await client.get("/v2/models/iris")  # the same bucket on V2 REST
        assert inference.status_code == 429
        assert inference.json()["code"] == "resource_exhausted"
    async with _client(platform, other["secret"]) as client:
        assert [(await client.get("/api/v1/models")).status_code for _ in range(5)] == [200] * 5
    assert (await api.get("/api/v1/models")).status_code == 200

    metrics = (await api.get("/metrics")).text
    line = f'modelplane_key_requests_limited_total{{key_id="{limited["id"]}",limit="rate"}} 2.0'
    assert line in metrics
    assert limited["secret"] not in metrics
    assert 'key_id="' + other["id"] not in metrics

    denied = (await api.get("/api/v1/audit", params={"key": limited["id"]})).json()
    quota = [e for e in denied if e["detail"] == "quota: rate"]
    assert len(quota) == 2
    assert {e["result"] for e in quota} == {"429"}
    assert {e["target"] for e in quota} == {"GET /api/v1/models", "GET /v2/models/iris"}


async def test_the_daily_budget(api, platform: Platform) -> None:
    key = await _key(api, daily=3)
    async with _client(platform, key["secret"]) as client:
        codes = [(await client.get("/api/v1/models")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


async def test_a_change_of_limits_takes_effect_at_once(api, platform: Platform) -> None:
    key = await _key(api, rate_limit=0.1, burst=1)
    async with _client(platform, key["secret"]) as client:
        assert (await client.get("/api/v1/models")).status_code == 200
        assert (await client.get("/api/v1/models")).status_code == 429
        await api.patch(f"/api/v1/keys/{key['id']}", json={"rate_limit": 0})
        assert (await client.get("/api/v1/models")).status_code == 200


async def test_grpc_answers_resource_exhausted_from_the_same_bucket(
    api, platform: Platform
) -> None:
    key = await _key(api, "invoker", rate_limit=0.5, burst=2)
    services = platform.services
    server = create_grpc_server(
        platform.gateway, services.keys, "test", 1 << 20, quotas=services.quotas
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with _client(platform, key["secret"]) as client:  # one token spent over HTTP
            assert (await client.get("/v2/models/iris")).status_code == 404
        metadata = (("authorization", f"Bearer {key['secret']}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated
            request = pb.ServerMetadataRequest()
            await stub.ServerMetadata(request, metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ServerMetadata(request, metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "requests per second" in (refused.value.details() or "")
            trailing = dict(refused.value.trailing_metadata() or ())
            assert trailing.get("retry-after") == "2"
            admin = (
                ("authorization", f"Bearer {services.settings.admin_key_path.read_text().strip()}"),
            )
            await stub.ServerMetadata(request, metadata=admin)  # another key: unaffected
    finally:
        await server.stop(None)


async def test_concurrency_is_released_on_grpc(api, platform: Platform) -> None:
    key = await _key(api, "invoker", max_concurrent=1)
    services = platform.services
    server = create_grpc_server(
        platform.gateway, services.keys, "test", 1 << 20, quotas=services.quotas
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        metadata = (("authorization", f"Bearer {key['secret']}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated
            for _ in range(3):  # one at a time: each finished call frees its slot
                await stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=metadata)
        quotas = services.quotas
        assert quotas is not None
        for _ in range(100):  # the server frees the slot just after the client has its answer
            if quotas.in_flight(key["id"]) == 0:
                break
            await asyncio.sleep(0.01)
        assert quotas.in_flight(key["id"]) == 0
    finally:
        await server.stop(None)
