"""Content-addressed blob store: each file stored once under the sha256 of its plaintext.

Writes go to a staging file that is hashed while it is written, fsynced, then renamed into
place, so a crash never leaves a half-written blob under a digest. With data keys (encryption
at rest, the default) the staged file is sealed (``modelplane.artifacts``) under a new data key
on commit: the wrapped key is stored first, then the sealed file renamed into place, and the
plaintext staging file removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from modelplane.artifacts import (
    CHUNK,
    MAGIC,
    ArtifactBroken,
    Sealer,
    is_sealed,
    new_data_key,
    open_sealed,
    opens_as,
)
from modelplane.domain import Artifact
from modelplane.errors import ModelplaneError, NotFound, PayloadTooLarge, UnsupportedModel
from modelplane.security.blobkeys import BlobKeys

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def blob_failed(digest: str, exc: Exception) -> ModelplaneError:
    """What a stored blob that fails verification answers: it was changed where it is kept."""
    return ModelplaneError(
        f"the stored blob sha256:{digest[:12]} failed verification ({exc}); it was damaged or "
        "tampered with where it is stored: push the model again"
    )


class Placer(Protocol):
    """Where a staged upload goes once it is whole: a local folder or a bucket."""

    @property
    def staging(self) -> Path: ...
    def place(self, staged: Path, digest: str) -> None: ...


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
    def exists(self, digest: str) -> bool: ...
    def verify(self, digest: str) -> bool: ...
    def delete(self, digest: str) -> None: ...
    def digests(self) -> Iterator[str]: ...
    def clean_staging(self) -> int: ...
    def data_key(self, digest: str) -> bytes | None: ...
    def export(self, digest: str, target: Path) -> None: ...
    def read(self, digest: str, max_bytes: int) -> bytes: ...


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_verified(chunks: Iterable[bytes], digest: str, target: Path) -> None:
    """Write a blob's plaintext ``chunks`` to ``target`` (a new file, mode 0600), verified
    against ``digest``; nothing is left at ``target`` when it does not verify."""
    found = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                found.update(chunk)
                out.write(chunk)
        if found.hexdigest() != digest:
            raise ArtifactBroken("its content does not match its digest")
    except ArtifactBroken as exc:
        target.unlink(missing_ok=True)
        raise blob_failed(digest, exc) from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def read_verified(chunks: Iterable[bytes], digest: str, max_bytes: int) -> bytes:
    """A blob's plaintext ``chunks`` in memory, verified against ``digest``;
    ``PayloadTooLarge`` as soon as they pass ``max_bytes``."""
    found, data = hashlib.sha256(), bytearray()
    try:
        for chunk in chunks:
            if len(data) + len(chunk) > max_bytes:
                raise PayloadTooLarge(f"the blob is larger than {max_bytes} bytes")
            found.update(chunk)
            data += chunk
        if found.hexdigest() != digest:
            raise ArtifactBroken("its content does not match its digest")
    except ArtifactBroken as exc:
        raise blob_failed(digest, exc) from None
    return bytes(data)


class LocalStagedBlob:
    """An upload written to a local staging file, hashed as it is written; ``commit`` hands it
    to its store whole."""

    def __init__(self, store: Placer, max_bytes: int) -> None:
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
        self._store.place(self.path, digest)
        return Artifact(digest=digest, size=self._size)

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class LocalBlobStore:
    """Blobs in a local folder: ``<root>/sha256/<ab>/<digest>``, staging in ``<root>/staging``,
    wrapped data keys (``keys``) in ``<root>/keys``."""

    def __init__(self, root: Path, keys: BlobKeys | None = None) -> None:
        self.root = root
        self.staging = root / "staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        self._keys = keys
        self._placing = threading.Lock()

    def place(self, staged: Path, digest: str) -> None:
        """Move the plaintext file ``staged`` into the store as ``digest`` (sealed when the
        store has data keys); a blob already there is kept and ``staged`` removed."""
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            staged.unlink()
            return
        if self._keys is None:
            os.replace(staged, final)
            fsync_dir(final.parent)
            return
        key = new_data_key()
        sealed = self._seal(staged, key)
        try:
            with self._placing:  # two pushes of the same content: one key, one blob
                if not final.exists():
                    self._keys.store(digest, key)  # the key is durable before its blob
                    os.replace(sealed, final)
                    fsync_dir(final.parent)
        finally:
            sealed.unlink(missing_ok=True)
            staged.unlink(missing_ok=True)

    def _seal(self, plain: Path, key: bytes) -> Path:
        sealed = self.staging / f"{uuid.uuid4().hex}.part"
        try:
            with plain.open("rb") as source, sealed.open("xb") as out:
                sealer = Sealer(key, out)
                while chunk := source.read(CHUNK):
                    sealer.write(chunk)
                sealer.close()
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            sealed.unlink(missing_ok=True)
            raise
        return sealed

    def seal_plaintext(self) -> int:
        """Seal the blobs an install without encryption left in the clear (run at start,
        before any push can be in flight). Crash-safe: a blob is replaced whole by its sealed
        copy only after its data key is stored. Returns how many were sealed."""
        if self._keys is None:
            return 0
        count = 0
        for digest in list(self.digests()):
            path = self.path(digest)
            if is_sealed(path):
                continue
            key = new_data_key()
            sealed = self._seal(path, key)
            try:
                self._keys.store(digest, key)
                os.replace(sealed, path)
                fsync_dir(path.parent)
            finally:
                sealed.unlink(missing_ok=True)
            count += 1
        return count

    def _plaintext(self, digest: str) -> Iterator[bytes]:
        """The blob's plaintext in chunks (``ArtifactBroken`` if it does not open)."""
        with self.path(digest).open("rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                f.seek(0)
                while chunk := f.read(CHUNK):
                    yield chunk
                return
            key = self._keys.get(digest) if self._keys is not None else None
            if key is None:
                raise ArtifactBroken("the blob is sealed and its data key is missing")
            f.seek(0)
            yield from open_sealed(key, f)

    def data_key(self, digest: str) -> bytes | None:
        """The key a replica needs to open the blob; None for a blob kept in the clear."""
        if self._keys is None or not is_sealed(self.path(digest)):
            return None
        return self._keys.get(digest)

    def export(self, digest: str, target: Path) -> None:
        export_verified(self._plaintext(digest), digest, target)

    def read(self, digest: str, max_bytes: int) -> bytes:
        return read_verified(self._plaintext(digest), digest, max_bytes)

    def stage(self, max_bytes: int) -> LocalStagedBlob:
        return LocalStagedBlob(self, max_bytes)

    def path(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest):
            raise NotFound(f"no blob with digest {digest!r}")
        return self.root / "sha256" / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def verify(self, digest: str) -> bool:
        return self.path(digest).is_file() and opens_as(self._plaintext(digest), digest)

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
        if self._keys is not None:
            self._keys.delete(digest)  # after the blob: a blob never outlives its key

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
        if self._keys is not None:
            for digest in list(self._keys.digests()):
                if not DIGEST_RE.match(digest) or not self.path(digest).exists():
                    self._keys.delete(digest)  # stored just before a write was interrupted
        return removed
