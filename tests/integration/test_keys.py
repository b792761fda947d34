"""Keys over the management API: the secret shown once, revocation, rotation, expiry, last use,
and the migration of the old ``user`` role."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from modelplane.registry.db import MIGRATIONS, make_engine, migrate
from modelplane.server import Platform

pytestmark = pytest.mark.databases


def _client(platform: Platform, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=platform.app),
        base_url="http://127.0.0.1:8000",
        headers={"Authorization": f"Bearer {key}"},
    )


async def _status(platform: Platform, key: str) -> int:
    async with _client(platform, key) as client:
        return (await client.get("/api/v1/models")).status_code


async def _until(platform: Platform, key: str, status: int, within_s: float) -> float:
    """Seconds until a request with ``key`` gets ``status`` (fails after ``within_s``)."""
    start = time.monotonic()
    while (got := await _status(platform, key)) != status:
        assert time.monotonic() - start < within_s, f"still {got} after {within_s} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def test_the_secret_is_shown_once_and_never_listed(api: httpx.AsyncClient, platform) -> None:
    created = await api.post(
        "/api/v1/keys",
        json={"name": "ci", "role": "viewer", "models": ["fraud-*"], "expires": "30d"},
    )
    assert created.status_code == 201, created.text
    key = created.json()
    secret = key["secret"]
    assert secret.startswith(f"mpk_{key['id']}_")  # the prefix secret scanners look for
    assert key["models"] == ["fraud-*"]
    assert key["state"] == "active"
    assert key["expires_at"]
    listed = await api.get("/api/v1/keys")
    # the random part (it may itself hold "_": split at the prefix, not at the last "_")
    assert secret.removeprefix(f"mpk_{key['id']}_") not in listed.text
    assert "secret" not in listed.text
    assert {k["name"] for k in listed.json()} == {"admin", "ci"}
    shown = await api.get(f"/api/v1/keys/{key['id']}")
    assert "secret" not in shown.json()
    assert await _status(platform, secret) == 200  # a viewer reads
    # stored hashed: the secret is in no row, nor anywhere in an SQLite database's files
    with platform.engine.connect() as db:
        rows = db.execute(sa.text("SELECT * FROM api_keys")).all()
    assert len(rows) == 2
    assert secret.removeprefix(f"mpk_{key['id']}_") not in repr(rows)
    if platform.engine.dialect.name == "sqlite":
        files = list(Path(platform.services.settings.home).glob("modelplane.db*"))
        assert files
        for path in files:
            assert secret.removeprefix(f"mpk_{key['id']}_").encode() not in path.read_bytes()


async def test_only_admins_manage_keys(api: httpx.AsyncClient, platform) -> None:
    for role in ["operator", "publisher", "invoker", "viewer"]:
        secret = (await api.post("/api/v1/keys", json={"name": role, "role": role})).json()[
            "secret"
        ]
        async with _client(platform, secret) as other:
            assert (await other.get("/api/v1/keys")).status_code == 403
            made = await other.post("/api/v1/keys", json={"name": "x", "role": "admin"})
            assert made.status_code == 403


async def test_a_revoked_key_is_refused_within_the_cache_time(api, platform) -> None:
    key = (await api.post("/api/v1/keys", json={"name": "app", "role": "viewer"})).json()
    assert await _status(platform, key["secret"]) == 200
    revoked = await api.delete(f"/api/v1/keys/{key['id']}")
    assert revoked.json()["state"] == "revoked"
    assert await _until(platform, key["secret"], 401, within_s=5.0) < 5.0
    assert (await api.get("/api/v1/keys")).json()[-1]["state"] == "revoked"
    assert (await api.delete("/api/v1/keys/nope")).status_code == 404


async def test_rotation_keeps_the_old_secret_for_the_grace_period(api, platform) -> None:
    key = (await api.post("/api/v1/keys", json={"name": "app", "role": "viewer"})).json()
    old = key["secret"]
    rotated = (await api.post(f"/api/v1/keys/{key['id']}/rotate", json={"grace": "2s"})).json()
    new = rotated["secret"]
    assert new != old
    assert new.startswith(f"mpk_{key['id']}_")
    assert rotated["previous_expires_at"] is not None
    assert await _status(platform, old) == 200
    assert await _status(platform, new) == 200
    await _until(platform, old, 401, within_s=2.0 + 5.0)
    assert await _status(platform, new) == 200
    # without a grace period the old secret stops at once
    newest = (await api.post(f"/api/v1/keys/{key['id']}/rotate", json={})).json()["secret"]
    assert await _status(platform, new) == 401
    assert await _status(platform, newest) == 200
    bad = await api.post(f"/api/v1/keys/{key['id']}/rotate", json={"grace": "soon"})
    assert bad.status_code == 400
    assert "30s, 10m" in bad.json()["error"]


async def test_expiry_and_update(api, platform) -> None:
    key = (
        await api.post("/api/v1/keys", json={"name": "t", "role": "viewer", "expires": "2s"})
    ).json()
    assert await _status(platform, key["secret"]) == 200
    await _until(platform, key["secret"], 401, within_s=2.0 + 5.0)
    assert (await api.get(f"/api/v1/keys/{key['id']}")).json()["state"] == "expired"
    changed = await api.patch(
        f"/api/v1/keys/{key['id']}", json={"expires": "never", "role": "invoker", "name": "t2"}
    )
    assert changed.json()["state"] == "active"
    assert changed.json()["role"] == "invoker"
    assert await _status(platform, key["secret"]) == 403  # an invoker may not read
    past = await api.post("/api/v1/keys", json={"name": "p", "role": "viewer", "expires": "x"})
    assert past.status_code == 400
    wrong = await api.post("/api/v1/keys", json={"name": "p", "role": "user"})
    assert wrong.status_code == 400


async def test_last_use_is_written_in_batches(api, platform) -> None:
    key = (await api.post("/api/v1/keys", json={"name": "app", "role": "viewer"})).json()
    for _ in range(5):
        assert await _status(platform, key["secret"]) == 200
    listed = {k["id"]: k for k in (await api.get("/api/v1/keys")).json()}
    assert listed[key["id"]]["last_used_at"] is None  # nothing written per request
    assert platform.services.keys.flush_usage() == 2  # the admin's and this key, one batch
    listed = {k["id"]: k for k in (await api.get("/api/v1/keys")).json()}
    assert listed[key["id"]]["last_used_at"] is not None


def test_old_user_keys_become_invokers(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
        connection.execute(
            sa.text(
                "INSERT INTO api_keys (id, secret_hash, role, name, created_at, revoked) "
                "VALUES ('k1', 'h', 'user', 'app', '2024-01-01', 0)"
            )
        )
    migrate(engine)
    with engine.connect() as connection:
        row = connection.execute(sa.text("SELECT role, models FROM api_keys")).one()
    assert tuple(row) == ("invoker", None)


async def test_the_last_active_admin_key_cannot_be_revoked_expired_or_demoted(
    platform: Platform, admin_key: str
) -> None:
    admin_id = admin_key.split("_")[1]
    async with _client(platform, admin_key) as api:
        for method, body in (("DELETE", None), ("PATCH", {"role": "operator"}),
                             ("PATCH", {"expires": "30d"})):  # fmt: skip
            refused = await api.request(method, f"/api/v1/keys/{admin_id}", json=body)
            assert refused.status_code == 409, refused.text
            assert (
                "last active admin key; create another admin key first" in refused.json()["error"]
            )
        # a revoked or expired admin is no stand-in; an active one is
        spent = (await api.post("/api/v1/keys", json={"name": "old", "role": "admin"})).json()
        assert (await api.delete(f"/api/v1/keys/{spent['id']}")).status_code == 200
        assert (await api.delete(f"/api/v1/keys/{admin_id}")).status_code == 409
        made = await api.post("/api/v1/keys", json={"name": "next", "role": "admin"})
        other = made.json()
        assert (await api.patch(f"/api/v1/keys/{admin_id}", json={"expires": "1d"})).is_success
        assert (await api.patch(f"/api/v1/keys/{admin_id}", json={"role": "viewer"})).is_success
    async with _client(platform, other["secret"]) as api:
        assert (await api.delete(f"/api/v1/keys/{other['id']}")).status_code == 409
        assert (await api.delete(f"/api/v1/keys/{admin_id}")).status_code == 200  # not an admin
