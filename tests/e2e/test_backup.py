"""Backups restored into a fresh server that serves from them: `modelplane admin backup` and
`admin restore` on the embedded default, and pg_dump plus a copy of the bucket on PostgreSQL
and S3 (docs/operations.md, Backups)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tarfile
import uuid

import httpx
import pytest
from tests.e2e.test_cluster import serves
from tests.faults.conftest import Load

from modelplane.testing import wait_for

pytestmark = pytest.mark.e2e


def test_backup_of_a_running_server_restores_into_a_fresh_one(
    server_factory, iris_file, tmp_path
) -> None:
    old = server_factory()
    old.start()
    old.push(iris_file)
    old.push(iris_file, "iris", "--allow-duplicate")
    assert old.cli("models", "alias", "iris:1", "stable").returncode == 0
    assert old.cli("deploy", "iris").returncode == 0
    made = old.cli("keys", "create", "--name", "ci", "--role", "viewer", "--json")
    viewer = json.loads(made.stdout)["secret"]

    archive = tmp_path / "backup.tar"
    with Load(old) as load:  # taken while it serves
        made = old.cli("admin", "backup", str(archive))
    assert made.returncode == 0, made.stderr
    assert "2 version(s) of 1 model(s)" in made.stdout
    assert load.failures == []
    assert old.cli("admin", "backup", str(archive)).returncode != 0  # never overwritten
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        blobs = [f.read() for m in tar.getmembers()
                 if "/sha256/" in m.name and (f := tar.extractfile(m)) is not None]  # fmt: skip
    assert names[0] == "MANIFEST.json"
    assert "modelplane.db" in names
    assert not any(n.endswith(("master.key", "admin.key")) for n in names)
    plaintext = iris_file.read_bytes()
    assert blobs
    assert all(plaintext[:64] not in blob for blob in blobs)  # sealed, as stored

    # what a restore refuses: no key, another key, a damaged archive, a folder in use
    home = tmp_path / "restored"
    refused = old.cli("admin", "restore", str(archive), "--home", str(home),
                      env={"MODELPLANE_MASTER_KEY": ""})  # fmt: skip
    assert refused.returncode != 0
    assert "--master-key-file" in refused.stderr
    other = tmp_path / "other.key"
    other.write_text(base64.b64encode(os.urandom(32)).decode())
    other.chmod(0o600)
    refused = old.cli("admin", "restore", str(archive), "--home", str(home),
                      "--master-key-file", str(other))  # fmt: skip
    assert refused.returncode != 0
    assert "is not the one this backup's blobs were sealed under" in refused.stderr
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    refused = old.cli("admin", "restore", str(cut), "--home", str(home),
                      "--master-key-file", str(old.home / "master.key"))  # fmt: skip
    assert refused.returncode != 0
    assert "is not a complete modelplane backup" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not home.exists()

    restored = old.cli("admin", "restore", str(archive), "--home", str(home),
                       "--master-key-file", str(old.home / "master.key"))  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert "every blob checked" in restored.stdout
    admin_key = old.key
    old.stop()

    # a fresh server on the restored home: the models, the alias, the deployment and the keys
    new = server_factory()
    new.home = home
    (home / "admin.key").write_text(admin_key + "\n")  # the old server's key still works
    new.start()
    wait_for(lambda: serves(new), timeout=60)
    shown = new.cli("models", "show", "iris@stable", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["version"] == 1
    assert new.cli("models", "show", "iris:2").returncode == 0
    reply = httpx.get(f"{new.url}/api/v1/models", headers={"Authorization": f"Bearer {viewer}"})
    assert reply.status_code == 200
    assert new.cli("deploy", "iris", "--replicas", "2").returncode == 0


@pytest.mark.timeout(300)
def test_postgres_and_s3_backup_restores_into_a_fresh_server(
    server_factory, postgres, s3, iris_file, tmp_path
) -> None:
    master = base64.b64encode(os.urandom(32)).decode()
    bucket = s3.bucket(f"models-{uuid.uuid4().hex[:8]}")
    database = postgres.database()
    old = server_factory(MODELPLANE_DATABASE_URL=database, MODELPLANE_MASTER_KEY=master,
                         MODELPLANE_STORAGE_URL=f"s3://{bucket}/prod", **s3.env)  # fmt: skip
    old.start()
    old.push(iris_file)
    assert old.cli("deploy", "iris").returncode == 0
    refused = old.cli("admin", "backup", str(tmp_path / "b.tar"))
    assert refused.returncode != 0
    assert "pg_dump" in refused.stderr

    # the documented procedure: pg_dump, then a copy of the bucket (blobs are immutable)
    dump = tmp_path / "modelplane.dump"
    name = database.rsplit("/", 1)[1]
    subprocess.run([str(postgres.bin / "pg_dump"), "-Fc", "-h", "127.0.0.1", "-p",
                    str(postgres.port), "-U", "modelplane", "-f", str(dump), name],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    copy = s3.bucket(f"restored-{uuid.uuid4().hex[:8]}")
    client = s3.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix="prod/")["Contents"]
    for item in listed:
        client.copy_object(Bucket=copy, Key=item["Key"],
                           CopySource={"Bucket": bucket, "Key": item["Key"]})  # fmt: skip
    admin_key = old.key
    old.stop()

    target = postgres.database()
    subprocess.run([str(postgres.bin / "pg_restore"), "--no-owner", "-h", "127.0.0.1", "-p",
                    str(postgres.port), "-U", "modelplane", "-d", target.rsplit("/", 1)[1],
                    str(dump)], check=True, capture_output=True, timeout=60)  # fmt: skip
    new = server_factory(MODELPLANE_DATABASE_URL=target, MODELPLANE_MASTER_KEY=master,
                         MODELPLANE_STORAGE_URL=f"s3://{copy}/prod", **s3.env)  # fmt: skip
    new.home.mkdir(parents=True)
    (new.home / "admin.key").write_text(admin_key + "\n")
    new.start()
    wait_for(lambda: serves(new), timeout=60)  # from the restored database and copied bucket
