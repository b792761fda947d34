"""Backups of the embedded default (SQLite and the local blob folder): one tar archive taken from
a running server, and its restore into a fresh home, checked before it becomes visible.

An archive holds, in this order: ``MANIFEST.json`` (format, when, the schema revision, the
master key's check value, every blob with its size), ``modelplane.db`` (an online snapshot of
the database: serving and pushes go on meanwhile) and each blob the snapshot refers to, sealed
as it is stored, with its wrapped data key. It never holds the master key or ``admin.key``: a
backup is ciphertext until the master key, kept apart, is given to ``restore``.

The server takes the snapshot, then hard-links the blobs it names into a scratch folder (a
version deleted afterwards cannot take its blob out of the backup), then streams the archive.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import sqlite3
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelplane import __version__
from modelplane.artifacts import CHUNK, open_sealed, opens_as
from modelplane.errors import Conflict, InvalidInput
from modelplane.security.blobkeys import BlobKeys, MasterKey, MasterKeyError

FORMAT = 1
MANIFEST = "MANIFEST.json"
DATABASE = "modelplane.db"
SCRATCH_PREFIX = "backup-"


def blob_member(digest: str) -> str:
    return f"blobs/sha256/{digest[:2]}/{digest}"


def key_member(digest: str) -> str:
    return f"blobs/keys/{digest}.key"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent copy of the state, in a scratch folder, ready to stream."""

    folder: Path
    manifest: dict[str, Any]

    def members(self) -> list[str]:
        """The archive's members after the manifest, in order."""
        names = [DATABASE]
        for blob in self.manifest["blobs"]:
            names += [key_member(blob["digest"]), blob_member(blob["digest"])]
        return names

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        shutil.copyfile(source, target)  # another filesystem, or links not allowed


def take_snapshot(database: Path, blobs: Path, work: Path, master: MasterKey) -> Snapshot:
    """Copy the SQLite ``database`` online and link the blobs (under ``blobs``) it refers to
    into a new folder under ``work``. ``Conflict`` when a version was deleted meanwhile."""
    folder = work / f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True, mode=0o700)
    try:
        copy = sqlite3.connect(folder / DATABASE)
        try:
            source = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
            try:
                source.backup(copy)
            finally:
                source.close()
            revision = copy.execute("SELECT version_num FROM alembic_version").fetchone()[0]
            models = copy.execute("SELECT count(*) FROM models").fetchone()[0]
            versions = copy.execute("SELECT count(*) FROM model_versions").fetchone()[0]
            rows = copy.execute(
                "SELECT digest FROM model_versions UNION SELECT source_digest FROM model_versions "
                "WHERE source_digest IS NOT NULL UNION SELECT samples_digest FROM model_versions "
                "WHERE samples_digest IS NOT NULL"
            ).fetchall()
        finally:
            copy.close()
        listed = []
        for digest in sorted(row[0] for row in rows):
            try:
                _link(blobs / "keys" / f"{digest}.key", folder / key_member(digest))
                _link(blobs / "sha256" / digest[:2] / digest, folder / blob_member(digest))
            except FileNotFoundError:
                raise Conflict(
                    "a version was deleted while the backup was being taken; run it again"
                ) from None
            listed.append({"digest": digest, "size": (folder / blob_member(digest)).stat().st_size})
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "modelplane": __version__,
        "schema": revision,
        "master_key_check": master.check,
        "models": models,
        "versions": versions,
        "blobs": listed,
    }
    return Snapshot(folder, manifest)


def _header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(mtime)
    return info.tobuf(tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def stream(snapshot: Snapshot) -> Iterator[bytes]:
    """The archive of ``snapshot``, chunk by chunk (its folder is removed at the end, or when
    the reader stops early)."""
    try:
        manifest = json.dumps(snapshot.manifest, indent=1).encode()
        now = datetime.datetime.now().timestamp()
        yield _header(MANIFEST, len(manifest), now) + manifest + _padding(len(manifest))
        for name in snapshot.members():
            path = snapshot.folder / name
            size = path.stat().st_size
            yield _header(name, size, now)
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
            yield _padding(size)
        yield b"\0" * (2 * tarfile.BLOCKSIZE)  # the end-of-archive marker
    finally:
        snapshot.remove()


def clean_snapshots(work: Path) -> None:
    """Remove the scratch folders of backups a crash interrupted."""
    if work.is_dir():
        for entry in work.glob(f"{SCRATCH_PREFIX}*"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)


# ---- reading an archive -------------------------------------------------------------------


def _bad(archive: Path, what: str) -> InvalidInput:
    return InvalidInput(f"{archive} is not a complete modelplane backup: {what}")


def read_manifest(archive: Path) -> dict[str, Any]:
    """The manifest of ``archive``, after checking that the archive is whole: every member the
    manifest names is there, with its size, and nothing else."""
    try:
        with tarfile.open(archive, "r:") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST:
                raise _bad(archive, f"it does not start with {MANIFEST}")
            f = tar.extractfile(first)
            manifest = json.loads(f.read()) if f is not None else None
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise _bad(archive, f"its manifest is not format {FORMAT}")
            found = {m.name: m.size for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise _bad(archive, str(exc) or type(exc).__name__) from None
    expected = {MANIFEST, DATABASE}
    for blob in manifest["blobs"]:
        expected |= {key_member(blob["digest"]), blob_member(blob["digest"])}
        if found.get(blob_member(blob["digest"])) != blob["size"]:
            raise _bad(archive, f"blob {blob['digest'][:12]} is missing or cut short")
    if set(found) != expected:
        raise _bad(archive, f"members missing or unexpected: {sorted(set(found) ^ expected)[:3]}")
    return manifest


@dataclass(frozen=True, slots=True)
class Restored:
    home: Path
    manifest: dict[str, Any]


def restore(
    archive: Path,
    home: Path,
    master: MasterKey,
    keep_master_key: bool,
    progress: Callable[[int], None] = lambda _: None,
) -> Restored:
    """Unpack ``archive`` into ``home`` (new or empty), checking every blob opens under
    ``master`` and matches its digest before the folder takes its name. ``keep_master_key``
    writes the key to ``home/master.key``. ``progress`` hears each blob's size as it is checked."""
    if home.exists() and (not home.is_dir() or any(home.iterdir())):
        raise InvalidInput(f"{home} is not empty; restore into a new folder")
    manifest = read_manifest(archive)
    if manifest["master_key_check"] != master.check:
        raise InvalidInput(
            f"the master key in {master.source} is not the one this backup's blobs were "
            "sealed under; give the server's master key (its master.key file, or "
            "MODELPLANE_MASTER_KEY)"
        )
    staging = home.with_name(f".{home.name}.restoring-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True, mode=0o700)
    try:
        with tarfile.open(archive, "r:") as tar:
            tar.extractall(staging, filter="data")
        _check_blobs(staging, master, manifest["blobs"], progress)
        if keep_master_key:
            target = staging / "master.key"
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(base64.b64encode(master.key).decode() + "\n")
        for path in staging.rglob("*"):
            path.chmod(0o700 if path.is_dir() else 0o600)
        if home.exists():
            home.rmdir()
        staging.rename(home)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Restored(home, manifest)


def _check_blobs(
    folder: Path, master: MasterKey, blobs: list[dict[str, Any]], progress: Callable[[int], None]
) -> None:
    try:
        keys = BlobKeys(folder / "blobs" / "keys", master)
    except MasterKeyError as exc:
        raise InvalidInput(str(exc)) from None
    for blob in blobs:
        digest = blob["digest"]
        try:
            key = keys.get(digest)
        except MasterKeyError as exc:
            raise InvalidInput(str(exc)) from None
        with (folder / blob_member(digest)).open("rb") as f:
            if key is None or not opens_as(open_sealed(key, f), digest):
                raise InvalidInput(
                    f"blob {digest[:12]} in the backup does not open to its digest: the "
                    "archive was damaged; take another backup"
                )
        progress(blob["size"])
