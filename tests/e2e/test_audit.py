"""Acceptance 6: ``modelplane audit`` shows a push, a deploy, a key creation and a denied
request with who and where, and no secret is anywhere in the database or the logs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from modelplane.testing import IRIS_REQUEST, wait_for

from .conftest import BIN, Server

pytestmark = pytest.mark.e2e


def _files(server: Server) -> list[Path]:
    """The database (and its WAL), the server's log folder with the replicas' logs, and what
    ``serve`` printed."""
    found = list(server.home.glob("modelplane.db*"))
    found += [p for p in (server.home / "logs").rglob("*") if p.is_file()]
    found.append(server.home.parent / "serve.log")
    return found


def test_the_audit_trail_shows_who_did_what_from_where_and_keeps_no_secret(
    server_factory, iris_file: Path
) -> None:
    server = server_factory()
    server.start()
    admin_secret = server.key.split("_", 2)[2]
    server.push(iris_file, "iris")
    assert server.cli("deploy", "iris").returncode == 0
    made = server.cli("keys", "create", "--name", "app", "--role", "invoker", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    secret = key["secret"]
    wait_for(lambda: server.deployment("iris")["state"] == "ready", timeout=120)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"}) as app:
        assert app.post("/v2/models/iris/infer", json=IRIS_REQUEST).status_code == 200
        assert app.post("/api/v1/deployments", json={"model": "iris"}).status_code == 403
    assert httpx.get(f"{server.url}/api/v1/models", headers={"Authorization": "Bearer nope"},
                     timeout=10).status_code == 401  # fmt: skip

    shown = server.cli("audit")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    admin_id = server.key.split("_")[1]
    for action in ("push", "deploy", "key.create"):
        line = next(line for line in lines if f" {action} " in line)
        assert f"admin({admin_id}) from 127.0.0.1" in line, line
    denied = [line for line in lines if " denied " in line]
    assert any(f"app({key['id']}) from 127.0.0.1 POST /api/v1/deployments" in d for d in denied)
    assert any(" 401 " in d and "anonymous from 127.0.0.1" in d for d in denied), denied

    as_json = server.cli("audit", "--json", "--action", "denied", "--key", key["id"])
    entries = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(e["action"], e["result"], e["key_name"]) for e in entries] == [
        ("denied", "403", "app")
    ]  # fmt: skip

    # --follow prints what happens next
    with subprocess.Popen(
        [str(BIN / "modelplane"), "audit", "--follow", "--action", "key.revoke"],
        env=server._env(), stdout=subprocess.PIPE, text=True,
    ) as follower:  # fmt: skip
        try:
            assert server.cli("keys", "revoke", key["id"]).returncode == 0
            assert follower.stdout is not None
            line = follower.stdout.readline()
        finally:
            follower.terminate()  # this one process, by its handle
    assert f"key.revoke    200  admin({admin_id}) from 127.0.0.1 {key['id']}" in line, line

    server.stop()  # a clean stop writes what is queued
    for path in _files(server):
        data = path.read_bytes()
        assert secret.split("_", 2)[2].encode() not in data, path
        assert admin_secret.encode() not in data, path
    assert any(p.name.endswith("-wal") or p.name == "modelplane.db" for p in _files(server))
    assert any((server.home / "logs").rglob("*.log*"))  # the replicas' logs were searched too
