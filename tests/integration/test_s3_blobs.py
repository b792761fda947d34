"""The blob store in an S3-compatible bucket (moto's server, started for the session): pushes
streamed in parts and sealed, only ciphertext in the bucket, the digest checked on the way in
and on every fetch, the replicas' local cache filled verified."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane.errors import ModelplaneError
from modelplane.registry.s3blobs import S3BlobStore, StorageUrlError, parse_url
from modelplane.security.blobkeys import BlobKeys, MasterKey
from modelplane.testing_servers import S3Server


@pytest.fixture
def store(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3BlobStore]:
    for name, value in s3.env.items():  # endpoint, region and credentials the usual way
        monkeypatch.setenv(name, value)
    bucket = s3.bucket(f"models-{uuid.uuid4().hex[:8]}")
    keys = BlobKeys(tmp_path / "keys", MasterKey(os.urandom(32), "test"))
    store = S3BlobStore(f"s3://{bucket}/team-a", tmp_path / "local", keys)
    yield store
    store.close()


async def push(store: S3BlobStore, data: bytes) -> str:
    staged = store.stage(len(data))
    for i in range(0, len(data), 1 << 20):
        staged.write(data[i : i + (1 << 20)])
    return staged.commit().digest


def objects(store: S3BlobStore) -> dict[str, bytes]:
    client = store._client
    listed = client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=store.bucket, Key=o["Key"])["Body"].read()
            for o in listed}  # fmt: skip


async def test_a_push_is_sealed_into_the_bucket_in_parts(store: S3BlobStore) -> None:
    data = os.urandom(3 << 20) + b"PLAINTEXT-MARKER" * 400_000  # 9 MiB: two parts
    digest = await push(store, data)
    stored = objects(store)
    assert set(stored) == {f"team-a/sha256/{digest[:2]}/{digest}", f"team-a/keys/{digest}.key"}
    blob = stored[f"team-a/sha256/{digest[:2]}/{digest}"]
    assert b"PLAINTEXT-MARKER" not in blob  # only ciphertext in the bucket
    assert len(blob) > len(data)
    assert list(store.staging.iterdir()) == []  # nothing staged is left behind
    assert store.read(digest, len(data)) == data
    assert store.verify(digest)
    assert list(store.digests()) == [digest]
    # the same content again: one blob, one key
    assert await push(store, data) == digest
    assert len(objects(store)) == 2


async def test_the_replica_cache_is_filled_verified(store: S3BlobStore, tmp_path: Path) -> None:
    data = b"model bytes " * 1000
    digest = await push(store, data)
    cached = store.path(digest)
    assert cached.is_relative_to(store.cache)
    from modelplane.artifacts import read_artifact

    key = store.data_key(digest)
    assert key is not None
    assert read_artifact(cached, digest, key) == data
    assert store.path(digest) == cached  # fetched once
    target = tmp_path / "out.bin"
    store.export(digest, target)
    assert target.read_bytes() == data


async def test_a_blob_changed_in_the_bucket_is_refused_on_every_fetch(store: S3BlobStore) -> None:
    digest = await push(store, b"the original model" * 1000)
    name = f"team-a/sha256/{digest[:2]}/{digest}"
    sealed = bytearray(objects(store)[name])
    sealed[len(sealed) // 2] ^= 0xFF
    store._client.put_object(Bucket=store.bucket, Key=name, Body=bytes(sealed))
    assert not store.verify(digest)
    with pytest.raises(ModelplaneError, match="failed verification"):
        store.read(digest, 1 << 20)
    with pytest.raises(ModelplaneError, match="failed verification"):
        store.path(digest)
    assert list(store.cache.rglob(digest)) == []  # no damaged copy becomes visible


async def test_delete_removes_the_blob_then_its_key(store: S3BlobStore) -> None:
    digest = await push(store, b"x" * 5000)
    store.path(digest)
    store.delete(digest)
    assert objects(store) == {}
    assert list(store.cache.rglob(digest)) == []


def test_storage_urls_are_checked(s3: S3Server, tmp_path: Path) -> None:
    assert parse_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_url("s3://bucket") == ("bucket", "")
    for bad in ("bucket/prefix", "http://bucket/x", "s3:///x"):
        with pytest.raises(StorageUrlError, match="s3://bucket/prefix"):
            parse_url(bad)
    missing = S3BlobStore("s3://no-such-bucket/x", tmp_path, None, s3.client())
    with pytest.raises(StorageUrlError, match="cannot reach the bucket 'no-such-bucket'"):
        missing.check()
