"""``modelplane serve`` with its state in a real PostgreSQL: push, deploy, infer, keys and audit
through the real server and CLI, and a restart that serves again from the database alone."""

from __future__ import annotations

import json
import signal

import httpx
import pytest
import sqlalchemy as sa

from modelplane.testing import IRIS_REQUEST, wait_for

pytestmark = pytest.mark.e2e


def test_serve_keeps_its_state_in_postgresql(server_factory, postgres, iris_file) -> None:
    url = postgres.database()
    server = server_factory(MODELPLANE_DATABASE_URL=url)
    server.start()
    server.push(iris_file)
    assert server.cli("deploy", "iris").returncode == 0
    created = server.cli("keys", "create", "--name", "ci", "--role", "invoker", "--json")
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["secret"]

    def infer(key: str) -> httpx.Response:
        return httpx.post(f"{server.url}/v2/models/iris/infer", json=IRIS_REQUEST,
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)  # fmt: skip

    assert infer(secret).json()["outputs"][0]["data"] == [0]
    engine = sa.create_engine(url)
    with engine.connect() as db:
        assert db.scalar(sa.text("SELECT count(*) FROM model_versions")) == 1
        assert db.scalar(sa.text("SELECT name FROM deployments")) == "iris"
        assert db.scalar(sa.text("SELECT count(*) FROM api_keys WHERE name = 'ci'")) == 1
    # nothing of the registry's state lives in the home folder
    assert not list(server.home.glob("modelplane.db*"))

    def audited() -> bool:
        return "key.create" in server.cli("audit", "--action", "key.create").stdout

    wait_for(audited, timeout=30)  # the trail is written in the background
    server.stop(signal.SIGKILL)
    server.start()
    wait_for(lambda: infer(secret).status_code == 200, timeout=60)
    assert infer(secret).json()["model_version"] == "1"
    assert audited()  # the audit trail, kept in PostgreSQL, survived
    engine.dispose()
