"""Acceptance 7 in process: repeated wrong keys from one address block that address (and only
it) for requests without a valid key, with the detector's counter and audit entry; a scan of
unknown names is counted."""

from __future__ import annotations

import httpx

from modelplane.registry.audit import AuditQuery
from modelplane.server import Platform


def client(platform: Platform, address: str, key: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=platform.app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000",
                             headers={"Authorization": f"Bearer {key}"})  # fmt: skip


async def test_wrong_keys_block_their_address_only(platform: Platform, admin_key: str) -> None:
    async with (
        client(platform, "127.0.0.9", "mp_wrong") as attacker,
        client(platform, "127.0.0.9", admin_key) as same_address,
        client(platform, "127.0.0.2", admin_key) as other,
    ):
        codes = [(await attacker.get("/v2/models/iris")).status_code for _ in range(30)]
        assert codes[:20] == [401] * 20
        assert set(codes[20:]) == {429}
        refused = await attacker.get("/api/v1/models")
        assert refused.status_code == 429
        assert "source address 127.0.0.9 is blocked until" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) > 250
        no_key = await same_address.get("/api/v1/models", headers={"Authorization": ""})
        assert no_key.status_code == 429
        # a valid key behind the same address (a shared NAT, a proxy) is not locked out
        assert (await same_address.get("/api/v1/models")).status_code == 200
        assert (await same_address.get("/v2/health/live")).status_code == 200
        assert (await other.get("/api/v1/models")).status_code == 200
        metrics = (await other.get("/metrics")).text
    assert 'modelplane_attacks_detected_total{detector="auth_failures"} 1.0' in metrics
    assert 'modelplane_attack_refused_requests_total{detector="auth_failures"} 12.0' in metrics
    platform.services.audit.flush()
    records = platform.services.audit_log.query(AuditQuery(action="detect.auth_failures"))
    assert [(r.entry.source, r.entry.result) for r in records] == [("127.0.0.9", "blocked")]


async def test_a_scan_of_unknown_names_is_detected(platform: Platform, admin_key: str) -> None:
    async with client(platform, "127.0.0.3", admin_key) as scanner:
        for i in range(20):
            assert (await scanner.post(f"/v2/models/m{i}/infer", json={})).status_code == 404
        metrics = (await scanner.get("/metrics")).text
    assert 'modelplane_attacks_detected_total{detector="model_scan"} 1.0' in metrics
