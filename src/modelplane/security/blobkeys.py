"""The master key and the per-blob data keys it wraps (envelope encryption of the blob store).

Each blob has its own random AES-256 data key. The key is stored beside the blobs, in
``<blobs>/keys/<digest>.key``, wrapped (AES-256-GCM, the digest as associated data) by the
master key, which lives in ``$MODELPLANE_HOME/master.key`` (created 0600 on first start) or in
``MODELPLANE_MASTER_KEY``. Every wrapped key names the master key that wrapped it by a check
value (an HMAC of a constant under the master key, which reveals nothing of it), so a replaced
master key is told apart from damage at start.

Rotating the master key re-wraps the data keys only (the blobs stay as they are): the new master
key is written to ``master.key.next`` first, each wrapped key is replaced atomically, and
``master.key.next`` becomes ``master.key`` last. A start that finds ``master.key.next`` holds
both keys and finishes the rotation, so a crash at any point loses nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelplane.artifacts import KEY_BYTES
from modelplane.errors import Conflict

log = logging.getLogger("modelplane.encryption")
NEXT_SUFFIX = ".next"
DAMAGED_SUFFIX = ".damaged"  # a key file a rotation could not re-wrap, kept aside for restoring
ENV_SOURCE = "MODELPLANE_MASTER_KEY"


class MasterKeyError(Exception):
    """The master key is missing, malformed or not the one this registry's keys were wrapped
    with. Said at start-up, in words an operator can act on."""


@dataclass(frozen=True, slots=True)
class MasterKey:
    key: bytes
    source: str  # the file it came from, or the environment variable (for messages)

    @property
    def check(self) -> str:
        mac = hmac.new(self.key, b"modelplane master key check", hashlib.sha256)
        return mac.hexdigest()[:16]


def _decode(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise MasterKeyError(
            f"the master key in {source} is not {KEY_BYTES} bytes in base64; make one with: "
            "python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'"
        )
    return key


def _write_private(path: Path, data: bytes) -> None:
    """Write ``path`` atomically, mode 0600, durable once this returns."""
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_master_key(path: Path) -> MasterKey:
    """The master key in the file ``path``, refused when other users can read it."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise MasterKeyError(
            f"the master key file {path} can be read by other users (mode {mode:o}); "
            f"run: chmod 600 {path}"
        )
    return MasterKey(_decode(path.read_text(), str(path)), str(path))


def load_master_key(path: Path, from_env: str | None) -> tuple[MasterKey, MasterKey | None]:
    """The master key (from the environment when given, else the file, created on first
    start) and, when a rotation was interrupted, the key it was rotating to."""
    if from_env:
        return MasterKey(_decode(from_env, ENV_SOURCE), ENV_SOURCE), None
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, base64.b64encode(os.urandom(KEY_BYTES)) + b"\n")
        log.info("created the master key %s (keep a copy apart from the blobs)", path)
    pending = path.with_name(path.name + NEXT_SUFFIX)
    return read_master_key(path), read_master_key(pending) if pending.exists() else None


def _read_doc(path: Path) -> dict[str, Any]:
    """A wrapped key file's fields; ``MasterKeyError`` naming the file when it is not one
    (truncated, not JSON, fields missing). ``FileNotFoundError`` passes through."""
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
        doc = None
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(field), str) for field in ("master", "nonce", "wrapped")
    ):
        raise MasterKeyError(
            f"the data key file {path} is damaged (not a wrapped key); restore it from a "
            "backup of the blob folder, or push the model of that blob again"
        )
    return doc


class BlobKeys:
    """Data keys of blobs, wrapped by the master key, one small file per blob."""

    def __init__(
        self,
        folder: Path,
        master: MasterKey,
        pending: MasterKey | None = None,
        held_elsewhere: str | None = None,
    ) -> None:
        """``held_elsewhere`` names where the wrapped keys live when a store keeps them itself
        (``wrap``/``unwrap``): rotation, which re-wraps the files here, is then refused."""
        self._folder = folder
        self._elsewhere = held_elsewhere
        folder.mkdir(parents=True, exist_ok=True)
        self._current = master
        self._known = {master.check: master}
        if pending is not None:
            self._known[pending.check] = pending
        self._lock = threading.Lock()
        self._rotating = threading.Lock()
        self._check()
        if pending is not None:
            log.warning("finishing an interrupted rotation of the master key")
            self._finish_rotation(pending)

    @property
    def master(self) -> MasterKey:
        return self._current

    def _path(self, digest: str) -> Path:
        return self._folder / f"{digest}.key"

    def _files(self) -> Iterator[Path]:
        return self._folder.glob("*.key")

    def _check(self) -> None:
        """Every wrapped key must open with a master key we hold: said once, at start. A
        damaged key file is named in the log, not a reason to stop: only its blob is lost."""
        foreign, damaged = 0, []
        for path in self._files():
            try:
                doc = _read_doc(path)
            except FileNotFoundError:
                continue  # its blob was deleted meanwhile
            except MasterKeyError:
                damaged.append(str(path))
                continue
            if doc["master"] not in self._known:
                foreign += 1
        if damaged:
            log.error(
                "%d damaged data key file(s), whose blobs cannot be opened until they are "
                "restored from a backup: %s", len(damaged), ", ".join(sorted(damaged)),
            )  # fmt: skip
        if foreign:
            raise MasterKeyError(
                f"the master key in {self._current.source} does not open the data keys of this "
                f"registry ({foreign} blob key(s) were wrapped by another master key); was the "
                "file replaced? Restore the original master key (MODELPLANE_MASTER_KEY_FILE or "
                "MODELPLANE_MASTER_KEY) and start again"
            )

    def _wrap(self, master: MasterKey, digest: str, key: bytes) -> bytes:
        nonce = os.urandom(12)
        wrapped = AESGCM(master.key).encrypt(nonce, key, digest.encode())
        doc = {"v": 1, "master": master.check, "nonce": base64.b64encode(nonce).decode(),
               "wrapped": base64.b64encode(wrapped).decode()}  # fmt: skip
        return json.dumps(doc).encode()

    def wrap(self, digest: str, key: bytes) -> bytes:
        """``key`` wrapped by the current master key, for a store that keeps it elsewhere."""
        with self._lock:
            master = self._current
        return self._wrap(master, digest, key)

    def store(self, digest: str, key: bytes) -> None:
        """Keep ``key`` as the data key of ``digest``, wrapped; durable once this returns."""
        _write_private(self._path(digest), self.wrap(digest, key))

    def get(self, digest: str) -> bytes | None:
        """The data key of ``digest``; None when the blob has none (it is not sealed)."""
        try:
            doc = _read_doc(self._path(digest))
        except FileNotFoundError:
            return None
        return self._unwrap(digest, doc)

    def unwrap(self, digest: str, wrapped: bytes) -> bytes:
        """The data key in what ``wrap`` returned (``MasterKeyError`` when it does not open)."""
        try:
            doc = json.loads(wrapped)
            fields = all(isinstance(doc.get(f), str) for f in ("master", "nonce", "wrapped"))
        except (ValueError, UnicodeDecodeError, AttributeError):
            fields = False
        if not fields:
            raise MasterKeyError(f"the data key of blob {digest[:12]} is damaged (not a key)")
        return self._unwrap(digest, doc)

    def _unwrap(self, digest: str, doc: dict[str, Any]) -> bytes:
        master = self._known.get(doc["master"])
        if master is None:
            raise MasterKeyError(
                f"the data key of blob {digest[:12]} was wrapped by another master key than "
                f"the one in {self._current.source}"
            )
        try:
            return AESGCM(master.key).decrypt(
                base64.b64decode(doc["nonce"]), base64.b64decode(doc["wrapped"]), digest.encode()
            )
        except (InvalidTag, ValueError):
            raise MasterKeyError(
                f"the data key of blob {digest[:12]} is damaged ({self._path(digest)})"
            ) from None

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        for path in self._files():
            yield path.name.removesuffix(".key")

    def rotate(self) -> int:
        """Re-wrap every data key under a new master key (file-held keys only); returns how
        many were re-wrapped. Blobs and running replicas are untouched."""
        if self._current.source == ENV_SOURCE:
            raise Conflict(
                "the master key comes from MODELPLANE_MASTER_KEY, which the server cannot "
                "change; use a master key file (MODELPLANE_MASTER_KEY_FILE) to rotate it here"
            )
        if self._elsewhere is not None:
            raise Conflict(
                f"the data keys are kept {self._elsewhere}; rotating the master key there is "
                "not supported yet: keep the master key, or move the blobs to a local folder"
            )
        if not self._rotating.acquire(blocking=False):
            raise Conflict("a rotation of the master key is already running; try again later")
        try:
            path = Path(self._current.source)
            new = MasterKey(os.urandom(KEY_BYTES), str(path))
            pending = path.with_name(path.name + NEXT_SUFFIX)
            _write_private(pending, base64.b64encode(new.key) + b"\n")
            with self._lock:
                self._known[new.check] = new
                self._current = new  # keys made from now on are wrapped by the new master key
            return self._finish_rotation(new)
        finally:
            self._rotating.release()

    def _finish_rotation(self, new: MasterKey) -> int:
        path = Path(self._current.source)
        count, damaged = 0, []
        for file in list(self._files()):
            digest = file.name.removesuffix(".key")
            try:
                done = _read_doc(file)["master"] == new.check
                key = None if done else self.get(digest)
            except FileNotFoundError:
                continue  # its blob was deleted meanwhile
            except MasterKeyError:
                # no key opens it, before or after: set aside, so it never blocks a start
                os.replace(file, file.with_name(file.name + DAMAGED_SUFFIX))
                damaged.append(str(file))
                continue
            if key is not None:
                _write_private(file, self._wrap(new, digest, key))
                count += 1
        if damaged:
            log.error(
                "master key rotation: %d damaged data key file(s) could not be re-wrapped and "
                "were renamed to *%s; their blobs cannot be opened until they are restored "
                "from a backup: %s", len(damaged), DAMAGED_SUFFIX, ", ".join(sorted(damaged)),
            )  # fmt: skip
        os.replace(path.with_name(path.name + NEXT_SUFFIX), path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        with self._lock:
            self._current = MasterKey(new.key, str(path))
            self._known = {new.check: self._current}
        log.info("master key rotated: %d data key(s) re-wrapped", count)
        return count
