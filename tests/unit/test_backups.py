"""The backup archive's framing: what `stream` writes, `read_manifest` reads back, and an
archive with a member its manifest does not name, or one cut short, is refused."""

from __future__ import annotations

import io
import tarfile

import pytest

from modelplane.backups import FORMAT, Snapshot, read_manifest, stream
from modelplane.errors import InvalidInput


def _archive(tmp_path, blobs: dict[str, bytes]) -> bytes:
    folder = tmp_path / "snapshot"
    (folder / "blobs" / "keys").mkdir(parents=True)
    (folder / "modelplane.db").write_bytes(b"database")
    listed = []
    for digest, data in blobs.items():
        (folder / "blobs" / "keys" / f"{digest}.key").write_bytes(b"{}")
        (folder / "blobs" / "sha256" / digest[:2]).mkdir(parents=True, exist_ok=True)
        (folder / "blobs" / "sha256" / digest[:2] / digest).write_bytes(data)
        listed.append({"digest": digest, "size": len(data)})
    data = b"".join(stream(Snapshot(folder, {"format": FORMAT, "blobs": listed})))
    assert not folder.exists()  # the scratch folder goes once streamed
    return data


def test_what_stream_writes_reads_back_whole(tmp_path) -> None:
    digest = "ab" * 32
    archive = tmp_path / "backup.tar"
    archive.write_bytes(_archive(tmp_path, {digest: b"x" * 1000}))
    assert read_manifest(archive)["blobs"] == [{"digest": digest, "size": 1000}]
    with tarfile.open(archive) as tar:
        names = ["MANIFEST.json", "modelplane.db", f"blobs/keys/{digest}.key",
                 f"blobs/sha256/ab/{digest}"]  # fmt: skip
        assert tar.getnames() == names
        member = tar.extractfile(f"blobs/sha256/ab/{digest}")
        assert member is not None
        assert member.read() == b"x" * 1000


def test_a_member_the_manifest_does_not_name_is_refused(tmp_path) -> None:
    archive = tmp_path / "backup.tar"
    archive.write_bytes(_archive(tmp_path, {}))
    with tarfile.open(archive, "a") as tar:
        info = tarfile.TarInfo("../outside")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"!"))
    with pytest.raises(InvalidInput, match="unexpected"):
        read_manifest(archive)


def test_an_archive_cut_short_is_refused(tmp_path) -> None:
    whole = _archive(tmp_path, {"cd" * 32: b"y" * 5000})
    archive = tmp_path / "cut.tar"
    archive.write_bytes(whole[:3000])
    with pytest.raises(InvalidInput, match="not a complete modelplane backup"):
        read_manifest(archive)
