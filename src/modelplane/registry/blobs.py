"""Content-addressed blob store: each file stored once under its sha256.

Writes go to a staging file that is hashed while it is written, fsynced, then renamed into
place, so a crash never leaves a half-written blob under a digest.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from modelplane.artifacts import sha256_file
from modelplane.domain import Artifact
from modelplane.errors import NotFound, PayloadTooLarge, UnsupportedModel

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


class StagedBlob(Protocol):
    @property
    def path(self) -> Path: ...
    def write(self, chunk: bytes) -> None: ...
    def seal(self) -> None: ...
    def commit(self) -> Artifact: ...
    def discard(self) -> None: ...


class BlobStore(Protocol):
    def stage(self, max_bytes: int) -> StagedBlob: ...
    def path(self, digest: str) -> Path: ...
    def verify(self, digest: str) -> bool: ...
    def delete(self, digest: str) -> None: ...
    def digests(self) -> Iterator[str]: ...
    def clean_staging(self) -> int: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStagedBlob:
    def __init__(self, store: LocalBlobStore, max_bytes: int) -> None:
        self._store = store
        self._max = max_bytes
        self.path = store.staging / f"{uuid.uuid4().hex}.part"
        self._file: BinaryIO = self.path.open("xb")
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._max:
            raise PayloadTooLarge(
                f"model file is larger than the limit of {self._max} bytes; raise "
                "MODELPLANE_REGISTRY__MAX_UPLOAD_BYTES on the server to accept it"
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def seal(self) -> None:
        """Flush the bytes to disk and close; the staged file can then be read."""
        if self._size == 0:
            self.discard()
            raise UnsupportedModel("the uploaded model file is empty")
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def commit(self) -> Artifact:
        self.seal()
        digest = self._hash.hexdigest()
        final = self._store.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            self.path.unlink()
        else:
            os.replace(self.path, final)
            _fsync_dir(final.parent)
        return Artifact(digest=digest, size=self._size)

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class LocalBlobStore:
    """Blobs in a local folder: ``<root>/sha256/<ab>/<digest>``, staging in ``<root>/staging``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / "staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    def stage(self, max_bytes: int) -> LocalStagedBlob:
        return LocalStagedBlob(self, max_bytes)

    def path(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest):
            raise NotFound(f"no blob with digest {digest!r}")
        return self.root / "sha256" / digest[:2] / digest

    def verify(self, digest: str) -> bool:
        path = self.path(digest)
        return path.is_file() and sha256_file(path) == digest

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        for path in (self.root / "sha256").glob("*/*"):
            if DIGEST_RE.match(path.name):
                yield path.name

    def clean_staging(self) -> int:
        """Remove what an interrupted write left behind; returns how many files went."""
        removed = 0
        for path in self.staging.glob("*.part"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed
