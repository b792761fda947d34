"""Encryption at rest, in process: no plaintext model in the blob folder, tampering and
truncation refused by the store and by a real replica process, plaintext blobs of an older
install sealed at start, rotation through the API."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from modelplane.artifacts import HEADER, TAG, is_sealed
from modelplane.errors import ModelplaneError
from modelplane.registry.blobs import LocalBlobStore
from modelplane.server import Platform, build, open_blob_store
from modelplane.settings import Settings


def blob_files(settings: Settings) -> list[Path]:
    return [p for p in settings.blob_dir.rglob("*") if p.is_file()]


def leaks(settings: Settings, needles: list[bytes]) -> list[str]:
    found = []
    for path in blob_files(settings):
        data = path.read_bytes()
        found += [f"{path.name}: {n!r}" for n in needles if n in data]
    return found


async def push(api: httpx.AsyncClient, model: bytes, name: str = "iris") -> dict[str, object]:
    response = await api.post(f"/api/v1/models/{name}/versions", content=model)
    assert response.status_code == 201, response.text
    result: dict[str, object] = response.json()
    return result


async def test_the_blob_folder_holds_no_plaintext_model(api, platform, settings, iris_bytes):
    version = await push(api, iris_bytes)
    digest = str(version["digest"])
    assert digest == hashlib.sha256(iris_bytes).hexdigest()  # named by its plaintext
    needles = [iris_bytes[:12], b"float_input", b"skl2onnx", b"ai.onnx.ml", iris_bytes[-64:]]
    assert leaks(settings, needles) == []
    blob = platform.services.registry.blobs.path(digest)
    assert is_sealed(blob)
    assert not list((settings.blob_dir / "staging").iterdir())
    # the same model again dedups to the same blob, still verifiable
    again = await api.post(
        "/api/v1/models/iris/versions", content=iris_bytes, params={"allow_duplicate": "true"}
    )
    assert again.status_code == 201, again.text
    assert again.json()["digest"] == digest
    assert platform.services.registry.blobs.verify(digest)


def replica(
    settings: Settings, blob: Path, digest: str, key: bytes | None
) -> subprocess.CompletedProcess[str]:
    """The real replica process, told to load ``blob``; it exits at once when verification
    fails (a good one would serve: it gets a socket path and a timeout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    if key is not None:
        env["MODELPLANE_REPLICA_ARTIFACT_KEY"] = key.hex()
    command = [sys.executable, "-m", "modelplane.serving.replica", "--name", "iris",
               "--version", "1", "--artifact", str(blob), "--digest", digest,
               "--uds", str(settings.home / "r.sock")]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


async def test_one_changed_byte_or_a_cut_is_a_clear_verification_error(
    api, platform, settings, iris_bytes
) -> None:
    digest = str((await push(api, iris_bytes))["digest"])
    blobs = platform.services.registry.blobs
    path, key = blobs.path(digest), blobs.data_key(digest)
    sealed = path.read_bytes()

    tampered = bytearray(sealed)
    tampered[HEADER.size + 100] ^= 0x01
    path.write_bytes(bytes(tampered))
    assert not blobs.verify(digest)
    with pytest.raises(ModelplaneError, match="failed verification") as caught:
        blobs.export(digest, settings.home / "out")
    assert str(settings.home) not in caught.value.message
    assert not (settings.home / "out").exists()
    result = replica(settings, path, digest, key)
    assert result.returncode == 3
    assert "failed verification" in result.stderr
    assert "changed or truncated" in result.stderr

    path.write_bytes(sealed[: len(sealed) - TAG - 1])  # the final chunk cut short
    assert not blobs.verify(digest)
    assert replica(settings, path, digest, key).returncode == 3

    path.write_bytes(sealed)
    assert blobs.verify(digest)
    without_key = replica(settings, path, digest, None)
    assert without_key.returncode == 3
    assert "no data key" in without_key.stderr


def test_plaintext_blobs_of_an_older_install_are_sealed_at_start(settings, iris_bytes):
    old = LocalBlobStore(settings.blob_dir)  # no data keys: how blobs were kept before
    staged = old.stage(1 << 20)
    staged.write(iris_bytes)
    digest = staged.commit().digest
    assert b"float_input" in old.path(digest).read_bytes()

    blobs, _ = open_blob_store(settings)
    assert blobs.seal_plaintext() == 1
    assert blobs.seal_plaintext() == 0
    assert leaks(settings, [b"float_input"]) == []
    assert blobs.verify(digest)
    blobs.export(digest, settings.home / "plain")
    assert (settings.home / "plain").read_bytes() == iris_bytes


async def test_rotation_through_the_api_keeps_every_blob_readable(
    api, platform: Platform, settings, iris_bytes
) -> None:
    digest = str((await push(api, iris_bytes))["digest"])
    before = settings.master_key_path.read_bytes()
    response = await api.post("/api/v1/admin/rotate-master-key")
    assert response.status_code == 200, response.text
    assert response.json()["rewrapped"] == 1
    assert settings.master_key_path.read_bytes() != before
    assert platform.services.registry.blobs.verify(digest)
    again = build(settings)  # a restart with the new key file
    assert again.services.registry.blobs.verify(digest)
