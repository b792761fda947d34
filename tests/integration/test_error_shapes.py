"""Every error, on every surface, is ``{"error": ..., "code": ...}``: unknown routes, wrong
methods, invalid parameters, missing keys, bugs; and an upload declared too large is refused
before its body is read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from modelplane.server import Platform
from modelplane.settings import Settings

CASES = [
    ("GET", "/nope", 404),
    ("GET", "/api/v1/nope", 404),
    ("GET", "/docs/static/nope.js", 404),
    ("GET", "/api/v1/models/m/versions/1/nope", 404),
    ("GET", "/v2/nope", 404),
    ("GET", "/v2/models/ghost/versions/1/nope", 404),
    ("DELETE", "/v2/models/ghost/infer", 404),
    ("DELETE", "/api/v1/models", 405),
    ("PATCH", "/api/v1/models/m", 405),
    ("PUT", "/api/v1/conversions", 405),
    ("POST", "/api/v1/deployments/d/nope", 404),
    ("GET", "/api/v1/models/m/versions?tag=1", 405),
    ("POST", "/api/v1/models/m/versions?tolerance=abc", 400),
    ("POST", "/api/v1/models/m/versions?trust_pickle=maybe", 400),
    ("POST", "/api/v1/models/m/versions/x/optimize", 400),
    ("PUT", "/api/v1/models/m/aliases/prod", 400),
]


def assert_error_shape(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, (answer.request.url, answer.text)
    doc = answer.json()
    assert set(doc) == {"error", "code"}, doc
    assert isinstance(doc["error"], str)
    assert doc["error"]
    assert isinstance(doc["code"], str)


@pytest.mark.parametrize(("method", "path", "status"), CASES)
async def test_every_error_has_the_one_shape(
    api: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    answer = await api.request(method, path, content=b"{}")
    assert_error_shape(answer, status)
    assert "detail" not in answer.text


async def test_a_missing_key_has_the_one_shape(api: httpx.AsyncClient) -> None:
    answer = await api.get("/api/v1/models", headers={"Authorization": ""})
    assert_error_shape(answer, 401)
    assert answer.json()["code"] == "unauthenticated"


async def test_a_bug_answers_500_in_the_one_shape_without_its_text(
    platform: Platform, admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("cannot open /srv/secret/db")

    monkeypatch.setattr(platform.services.registry, "list_models", broken)
    transport = httpx.ASGITransport(app=platform.app, raise_app_exceptions=False)
    headers = {"Authorization": f"Bearer {admin_key}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1:8000", headers=headers
    ) as c:
        answer = await c.get("/api/v1/models")
    assert_error_shape(answer, 500)
    assert "/srv/secret" not in answer.text


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", registry={"max_upload_bytes": 1 << 20})


async def test_a_push_declared_too_large_is_refused_before_its_body_is_read(
    api: httpx.AsyncClient,
) -> None:
    pulled = []

    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            pulled.append(1)
            yield b"\0" * (256 << 10)

    for path in ("/api/v1/models/m/versions", "/api/v1/samples"):
        pulled.clear()
        declared = {"Content-Length": str(10**12)}
        answer = await api.post(path, content=body(), headers=declared)
        assert_error_shape(answer, 413)
        assert len(pulled) <= 1, path  # refused on the declared length, not after streaming
