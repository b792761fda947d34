"""A push whose converter's extra is not installed is refused at once, with the pip command."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import httpx

from modelplane.api.app import create_app
from modelplane.registry.blobs import LocalBlobStore
from modelplane.registry.conversions import ConversionService
from modelplane.registry.db import make_engine, make_sessions
from modelplane.server import Platform
from modelplane.settings import Settings


async def test_a_push_without_its_extra_is_422_with_the_pip_command(
    platform: Platform, settings: Settings, admin_key: str, tmp_path: Path
) -> None:
    services = platform.services
    conversions = ConversionService(
        make_sessions(make_engine(settings.resolved_database_url)),
        services.registry,
        LocalBlobStore(settings.blob_dir),
        settings,
        services.metrics,
        is_importable=lambda module: module != "torch",  # as if torch were not installed
    )
    app = create_app(dataclasses.replace(services, conversions=conversions), platform.gateway)
    script = tmp_path / "model.pt"  # what torch.jit.save writes, as far as detection reads it
    with zipfile.ZipFile(script, "w") as archive:
        for name in ("m/code/m.py", "m/data.pkl", "m/constants.pkl"):
            archive.writestr(name, b"x")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://127.0.0.1:8000",
        headers={"Authorization": f"Bearer {admin_key}"},
    ) as api:
        response = await api.post(
            "/api/v1/models/net/versions", content=script.read_bytes(), params={"format": "torch"}
        )
        assert response.status_code == 422, response.text
        assert response.json() == {
            "error": "pushing a PyTorch model needs the torch extra: "
            "pip install 'modelplane[torch]'",
            "code": "unsupported_model",
        }
        assert (await api.get("/api/v1/conversions")).json() == []  # none was started
    # and the refused upload left nothing behind in the blob store
    assert list(services.registry.blobs.digests()) == []
