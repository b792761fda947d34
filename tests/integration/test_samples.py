"""``samples=`` names only samples the pushing key uploaded: never another key's, never any other
blob, and the answer is the same as for a digest that does not exist. Samples are read in
memory within their limits, and a pickle inside an .npz is never loaded."""

from __future__ import annotations

import hashlib
import io
import json

import httpx
import numpy as np
import pytest

from modelplane.errors import InvalidInput, PayloadTooLarge
from modelplane.registry.conversions import SampleUploads
from modelplane.security.inputguard import JSON_MAX_ARRAYS, JSON_MAX_BYTES, load_samples
from modelplane.server import Platform
from modelplane.testing import identity_onnx

SAMPLES = json.dumps({"x": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.7]]}).encode()


def client(platform: Platform, key: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=platform.app)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000",
                             headers={"Authorization": f"Bearer {key}"})  # fmt: skip


async def new_key(api: httpx.AsyncClient, name: str) -> str:
    made = await api.post("/api/v1/keys", json={"name": name, "role": "publisher"})
    assert made.status_code == 201, made.text
    return str(made.json()["secret"])


async def push(c: httpx.AsyncClient, name: str, samples: str) -> httpx.Response:
    return await c.post(f"/api/v1/models/{name}/versions", content=identity_onnx("FP32"),
                        params={"samples": samples, "allow_duplicate": True})  # fmt: skip


async def test_samples_are_only_those_the_key_uploaded(
    platform: Platform, api: httpx.AsyncClient
) -> None:
    async with (
        client(platform, await new_key(api, "a")) as a,
        client(platform, await new_key(api, "b")) as b,
    ):
        uploaded = await a.post("/api/v1/samples", content=SAMPLES)
        assert uploaded.status_code == 201
        digest = uploaded.json()["digest"]
        pushed = await push(a, "m", digest)
        assert pushed.status_code == 201, pushed.text
        assert "x" in pushed.json()["input_stats"]

        model_digest = hashlib.sha256(identity_onnx("FP32")).hexdigest()  # a blob, not samples
        missing = "0" * 64
        answers = [await push(b, "m", digest), await push(a, "m", model_digest),
                   await push(b, "m", missing)]  # fmt: skip
    assert [r.status_code for r in answers] == [404, 404, 404]
    bodies = [
        r.text.replace(d, "D")
        for r, d in zip(answers, (digest, model_digest, missing), strict=True)
    ]
    assert bodies[0] == bodies[1] == bodies[2]  # another key's, another blob, none: all alike


def test_the_uploads_remembered_are_bounded() -> None:
    uploads = SampleUploads(limit=2)
    for digest in ("a", "b", "c"):
        uploads.add("k", digest, 1)
    assert [uploads.size("k", d) for d in ("a", "b", "c")] == [None, 1, 1]
    assert uploads.size("other", "c") is None


def test_a_pickle_in_an_npz_is_never_loaded() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InvalidInput, match=r"not a valid \.npz"):
        load_samples(buffer.getvalue(), 1 << 20)


def test_json_samples_are_parsed_within_limits() -> None:
    with pytest.raises(InvalidInput, match=r"\.npz"):
        load_samples(b"[" * (JSON_MAX_ARRAYS + 1), 1 << 20)
    with pytest.raises(InvalidInput, match=r"\.npz"):
        load_samples(b" " * (JSON_MAX_BYTES + 1), 1 << 20)
    assert load_samples(SAMPLES, 1 << 20)["x"].shape == (3, 2)


def test_a_blob_is_read_in_memory_up_to_its_cap(platform: Platform) -> None:
    blobs = platform.services.registry.blobs
    staged = blobs.stage(1 << 20)
    staged.write(SAMPLES)
    artifact = staged.commit()
    assert blobs.read(artifact.digest, len(SAMPLES)) == SAMPLES
    with pytest.raises(PayloadTooLarge):
        blobs.read(artifact.digest, len(SAMPLES) - 1)
