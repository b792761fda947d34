"""The audit trail over the HTTP app: every management change and every denial leaves an entry
with who, from where, what and the result; the trail is filterable, admin-only and scoped."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from modelplane.server import Platform

pytestmark = pytest.mark.databases

BASE = "http://127.0.0.1:8000"  # a name the server answers to by default


def _client(platform: Platform, key: str | None, **headers: str) -> httpx.AsyncClient:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=platform.app, client=("10.1.2.3", 4567)),
        base_url=BASE,
        headers=headers,
    )


async def _entries(api: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await api.get("/api/v1/audit", params=params)
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def _one(entries: list[dict[str, Any]], action: str) -> dict[str, Any]:
    found = [e for e in entries if e["action"] == action]
    assert found, f"no {action!r} entry in {[e['action'] for e in entries]}"
    return found[-1]


async def test_every_mutating_route_leaves_an_entry(
    platform: Platform, admin_key: str, iris_bytes: bytes
) -> None:
    admin_id = admin_key.split("_")[1]
    async with _client(platform, admin_key) as api:
        assert (await api.post("/api/v1/models/iris/versions", content=iris_bytes)).is_success
        await api.put("/api/v1/models/iris/aliases/prod", json={"version": 1})
        await api.delete("/api/v1/models/iris/aliases/prod")
        await api.post("/api/v1/models/iris/versions/1/optimize", json={})
        assert (await api.post("/api/v1/deployments", json={"model": "iris:1"})).is_success
        await api.delete("/api/v1/deployments/iris")
        await api.post("/api/v1/nodes/local/cordon", json={"reason": "x"})
        await api.post("/api/v1/nodes/local/cordon", json={"drain": True})
        await api.delete("/api/v1/nodes/local/cordon")
        created = (await api.post("/api/v1/keys", json={"name": "ci", "role": "viewer"})).json()
        await api.patch(f"/api/v1/keys/{created['id']}", json={"name": "ci2"})
        rotated = (await api.post(f"/api/v1/keys/{created['id']}/rotate", json={})).json()
        await api.delete(f"/api/v1/keys/{created['id']}")
        await api.post("/api/v1/admin/rotate-master-key")
        await api.delete("/api/v1/models/iris/versions/1")
        await api.delete("/api/v1/models/iris")
        entries = await _entries(api, limit=1000)
    expected = {
        "push": ("iris", "201"),
        "alias": ("iris:prod", "200"),
        "unalias": ("iris:prod", None),
        "optimize": ("iris:1", None),
        "deploy": ("iris", "200"),
        "undeploy": ("iris", "204"),
        "node.cordon": ("local", None),
        "node.drain": ("local", None),
        "node.uncordon": ("local", None),
        "key.create": ("", "201"),
        "key.update": (created["id"], "200"),
        "key.rotate": (created["id"], "200"),
        "key.revoke": (created["id"], "200"),
        "master_key.rotate": ("", "200"),
        "delete": (None, None),
    }
    for action, (target, result) in expected.items():
        entry = _one(entries, action)
        assert (entry["key_id"], entry["key_name"]) == (admin_id, "admin"), entry
        assert entry["source"] == "10.1.2.3", entry
        if target is not None:
            assert entry["target"] == target, entry
        if result is not None:
            assert entry["result"] == result, entry
    assert _one(entries, "deploy")["detail"] == "model iris:1"
    assert [e["target"] for e in entries if e["action"] == "delete"] == ["iris:1", "iris"]
    # the trail never holds a secret
    text = str(entries)
    for secret in (admin_key, created["secret"], rotated["secret"]):
        assert secret.split("_", 2)[2] not in text


async def test_denied_requests_leave_an_entry(platform: Platform, api: httpx.AsyncClient) -> None:
    viewer = (await api.post("/api/v1/keys", json={"name": "look", "role": "viewer"})).json()
    async with _client(platform, viewer["secret"]) as other:
        assert (await other.post("/api/v1/deployments", json={"model": "x"})).status_code == 403
    async with _client(platform, "mpk_abcdef_not-the-secret") as wrong:
        assert (await wrong.get("/api/v1/models")).status_code == 401
    async with _client(platform, None) as nobody:
        assert (await nobody.post("/v2/models/iris/infer", content=b"{}")).status_code == 401
    denied = await _entries(api, action="denied")
    forbidden, wrong_key, no_key = denied[-3:]
    fields = ("key_id", "key_name", "source", "target", "result", "detail")
    assert [forbidden[f] for f in fields] == [
        viewer["id"], "look", "10.1.2.3", "POST /api/v1/deployments", "403", "deploy"
    ]  # fmt: skip
    assert [wrong_key[f] for f in fields] == [
        "abcdef", None, "10.1.2.3", "GET /api/v1/models", "401", "read"
    ]  # fmt: skip
    assert [no_key[f] for f in fields] == [
        None, None, "10.1.2.3", "POST /v2/models/iris/infer", "401", "infer"
    ]  # fmt: skip
    assert "not-the-secret" not in str(denied)


async def test_reads_and_inference_are_not_audited(
    platform: Platform, api: httpx.AsyncClient
) -> None:
    await api.get("/api/v1/models")
    await api.get("/api/v1/keys")
    await api.post("/v2/models/ghost/infer", content=b"{}")  # a 404, not a denial
    assert await _entries(api) == []


async def test_filters(platform: Platform, api: httpx.AsyncClient, admin_key: str) -> None:
    viewer = (await api.post("/api/v1/keys", json={"name": "v", "role": "viewer"})).json()
    async with _client(platform, viewer["secret"]) as other:
        await other.delete("/api/v1/keys/nope")  # denied: 403
    everything = await _entries(api)
    assert [e["action"] for e in everything] == ["key.create", "denied"]
    assert [e["action"] for e in await _entries(api, key=viewer["id"])] == ["denied"]
    assert [e["action"] for e in await _entries(api, action="key.create")] == ["key.create"]
    assert len(await _entries(api, limit=1)) == 1
    assert await _entries(api, since="2000-01-01T00:00:00Z") == everything
    assert await _entries(api, since="2999-01-01T00:00:00Z") == []
    assert len(await _entries(api, since="10m")) == 2
    assert (await api.get("/api/v1/audit", params={"since": "soon"})).status_code == 400


async def test_the_trail_is_admin_only_and_scoped(
    platform: Platform, api: httpx.AsyncClient
) -> None:
    for role in ["operator", "publisher", "invoker", "viewer"]:
        secret = (await api.post("/api/v1/keys", json={"name": role, "role": role})).json()
        async with _client(platform, secret["secret"]) as other:
            assert (await other.get("/api/v1/audit")).status_code == 403
    await api.put("/api/v1/models/fraud-a/aliases/x", json={"version": 1})  # 404, audited
    await api.put("/api/v1/models/other/aliases/x", json={"version": 1})
    scoped = (
        await api.post("/api/v1/keys", json={"name": "s", "role": "admin", "models": ["fraud-*"]})
    ).json()
    async with _client(platform, scoped["secret"]) as other:
        seen = await _entries(other)
    assert [e["target"] for e in seen] == ["fraud-a:x"]


async def test_dashboard_sign_in_and_out_are_audited(platform: Platform, admin_key: str) -> None:
    # from the dashboard's own page
    async with _client(platform, None, Origin=BASE) as browser:
        wrong = await browser.post("/login", data={"key": "wrong"})
        assert wrong.status_code == 401, wrong.text
        assert (await browser.post("/login", data={"key": admin_key})).status_code == 303
        browser.cookies.set("modelplane_key", admin_key)
        assert (await browser.post("/logout")).status_code == 303
    async with _client(platform, admin_key) as api:
        entries = await _entries(api)
    assert [(e["action"], e["result"]) for e in entries] == [
        ("sign_in", "401"), ("sign_in", "303"), ("sign_out", "303")
    ]  # fmt: skip
    assert [e["key_name"] for e in entries] == [None, "admin", "admin"]
    assert admin_key.split("_", 2)[2] not in str(entries)


async def test_host_and_csrf_refusals_are_audited(platform: Platform, admin_key: str) -> None:
    admin_id = admin_key.split("_")[1]
    async with _client(platform, None, host="evil.example:8000") as rebinding:
        assert (await rebinding.get("/api/v1/models")).status_code == 400
    async with _client(platform, None, origin="https://evil.example") as forged:
        forged.cookies.set("modelplane_key", admin_key)
        made = await forged.post("/api/v1/keys", json={"name": "x", "role": "admin"})
        assert made.status_code == 403
    async with _client(platform, admin_key) as api:
        denied = await _entries(api, action="denied")
    by_result = {e["result"]: e for e in denied}
    host = by_result["400"]
    assert (host["target"], host["source"]) == ("GET /api/v1/models", "10.1.2.3")
    assert host["detail"] == "host not allowed: evil.example:8000"
    csrf = by_result["403"]
    assert (csrf["target"], csrf["key_id"]) == ("POST /api/v1/keys", admin_id)
    assert csrf["detail"] == "cross-origin: https://evil.example"
    assert admin_key.split("_", 2)[2] not in str(denied)


async def test_refused_changes_are_denials_never_management_entries(
    platform: Platform, api: httpx.AsyncClient
) -> None:
    limited = await api.post(
        "/api/v1/keys", json={"name": "slow", "role": "publisher", "rate_limit": 0.001}
    )
    async with _client(platform, limited.json()["secret"]) as slow:
        first = await slow.post("/api/v1/models/m/versions", content=b"not a model")
        assert first.status_code not in (401, 403, 429)  # reached its route: a failed push
        assert (await slow.post("/api/v1/models/m/versions", content=b"x")).status_code == 429
    entries = await _entries(api, limit=1000)
    assert [e["result"] for e in entries if e["action"] == "push"] == [str(first.status_code)]
    denied = [
        e["detail"]
        for e in entries
        if (e["action"], e["result"], e["target"][:4]) == ("denied", "429", "POST")
    ]
    assert denied == ["quota: rate"]  # once: by the quotas, not again by the middleware
    assert platform.services.audit.dropped_by_kind["management"] == 0
