"""Artifacts in an S3-compatible bucket (moto's server) and state in PostgreSQL: what one
server pushed and deployed is served by a server on another home (another machine) that shares
only the database, the bucket and the master key. The bucket holds only ciphertext."""

from __future__ import annotations

import base64
import os
import uuid

import httpx
import pytest

from modelplane.testing import IRIS_REQUEST, wait_for

pytestmark = pytest.mark.e2e


def test_a_second_machine_serves_from_the_database_and_the_bucket(
    server_factory, postgres, s3, iris_file
) -> None:
    bucket = s3.bucket(f"models-{uuid.uuid4().hex[:8]}")
    shared = {
        "MODELPLANE_DATABASE_URL": postgres.database(),
        "MODELPLANE_STORAGE_URL": f"s3://{bucket}/prod",
        "MODELPLANE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        **s3.env,
    }
    first = server_factory(**shared)
    first.start()
    first.push(iris_file)
    assert first.cli("deploy", "iris").returncode == 0
    key = first.key

    def infer(server) -> httpx.Response:
        return httpx.post(f"{server.url}/v2/models/iris/infer", json=IRIS_REQUEST,
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)  # fmt: skip

    assert infer(first).json()["outputs"][0]["data"] == [0]
    client = s3.client()
    names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(n.split("/")[1] for n in names) == ["keys", "sha256"]
    plaintext = iris_file.read_bytes()
    for name in names:
        stored = client.get_object(Bucket=bucket, Key=name)["Body"].read()
        assert b"float_input" not in stored  # the model's own strings: only ciphertext there
        assert plaintext[:64] not in stored
    assert not list((first.home / "blobs").glob("sha256/*/*"))  # no blob kept on this disk
    first.stop()

    # another machine: its own empty home; the admin key is the one the database already has
    second = server_factory(**shared)
    second.home.mkdir(parents=True)
    (second.home / "admin.key").write_text(key + "\n")
    second.start()
    wait_for(lambda: infer(second).status_code == 200, timeout=60)
    assert infer(second).json()["outputs"][0]["data"] == [0]
    listed = second.cli("models", "list")
    assert "iris" in listed.stdout, listed.stderr
