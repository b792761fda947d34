"""Layered fixtures: settings -> platform (stores, services, app) -> clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelplane.server import Platform, build
from modelplane.settings import Settings
from modelplane.testing import iris_onnx, train_iris


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
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def platform(settings: Settings) -> Platform:
    return build(settings)


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
