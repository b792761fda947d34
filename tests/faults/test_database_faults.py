"""The database goes away under load (PostgreSQL stopped for 5 s, then started again):
inference keeps answering from the routes held in memory, management calls get a 503 that says
what is wrong, and everything recovers by itself. Bounds in docs/operations.md."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.e2e.conftest import Server
from tests.faults.conftest import Load

from modelplane.testing import wait_for
from modelplane.testing_servers import PostgresServer, postgres_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own: it is stopped and started again."""
    with postgres_server() as server:
        yield server


def test_postgresql_restarted_under_load(own_postgres: PostgresServer, tmp_path: Path,
                                         iris_file) -> None:  # fmt: skip
    env = {"MODELPLANE_DATABASE_URL": own_postgres.database(),
           "MODELPLANE_SCHEDULER__RECONCILE_INTERVAL_S": "0.5"}  # fmt: skip
    server = Server(tmp_path / "home", env)
    try:
        server.start()
        server.push(iris_file)
        assert server.cli("deploy", "iris", "--replicas", "2").returncode == 0

        def models() -> httpx.Response:
            return httpx.get(f"{server.url}/api/v1/models", headers=server.auth, timeout=10)

        with Load(server) as load:
            time.sleep(1)
            own_postgres.stop()
            down = time.monotonic()
            refused = models()
            listed = server.cli("models", "list")
            time.sleep(5)
            own_postgres.start()
            wait_for(lambda: models().status_code == 200, timeout=30)
            recovered_s = time.monotonic() - down
            time.sleep(1)
        print(f"database restart: sent {load.sent}, failed {len(load.failures)}, management "
              f"back {recovered_s:.1f} s after the database went down")  # fmt: skip
        assert refused.status_code == 503, refused.text
        assert "database" in refused.json()["error"]
        assert listed.returncode != 0
        assert "database" in listed.stderr
        assert "Traceback" not in listed.stderr
        assert load.sent > 100
        assert load.failures == []  # inference never noticed
        assert recovered_s <= 15.0
        # and it is whole: a deploy through the API works again
        assert server.cli("deploy", "iris", "--replicas", "1").returncode == 0
    finally:
        server.stop()
