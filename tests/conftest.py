"""Layered fixtures: settings -> platform (stores, services, app) -> clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelplane.server import Platform, build
from modelplane.settings import Settings
from modelplane.testing import iris_onnx, train_iris
from modelplane.testing_servers import PostgresServer, S3Server, postgres_server, s3_server

DATABASES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Modules marked ``databases`` run each test on SQLite and on PostgreSQL."""
    marked = metafunc.definition.get_closest_marker("databases") is not None
    if marked and "database_url" in metafunc.fixturenames:
        metafunc.parametrize("database_url", DATABASES, indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (a new database for each test that asks)."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """moto's S3 server for the session (a new bucket for each test that asks)."""
    with s3_server() as server:
        yield server


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None (SQLite in the test's home) unless the test runs on PostgreSQL."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.database()


@pytest.fixture(scope="session")
def iris_sklearn() -> Any:
    return train_iris()


@pytest.fixture(scope="session")
def iris_bytes(iris_sklearn: Any) -> bytes:
    return iris_onnx(iris_sklearn)


@pytest.fixture
def iris_file(tmp_path: Path, iris_bytes: bytes) -> Path:
    path = tmp_path / "iris.onnx"
    path.write_bytes(iris_bytes)
    return path


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return Settings(home=tmp_path / "home", database_url=database_url)


@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    platform = build(settings)
    yield platform
    platform.engine.dispose()


@pytest.fixture
def admin_key(platform: Platform, settings: Settings) -> str:
    return settings.admin_key_path.read_text().strip()


@pytest.fixture
async def api(platform: Platform, admin_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of the whole HTTP app, authenticated as admin."""
    transport = httpx.ASGITransport(app=platform.app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://127.0.0.1:8000",
        headers={"Authorization": f"Bearer {admin_key}"},
    ) as client:
        yield client
