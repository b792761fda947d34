"""Artifact digests and the sealed (encrypted) artifact format, shared by the blob store (which
writes) and replicas (which decrypt in memory and verify).

A sealed artifact is streamed AES-256-GCM under its own data key: a header (magic, a random
8-byte nonce prefix, the chunk size), then the plaintext in chunks, each sealed with the nonce
``prefix || chunk index`` and the associated data ``header || index || final flag``, so a
changed, dropped, reordered or truncated chunk fails to open. The digest that names an artifact
is always the sha256 of its plaintext.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CHUNK = 1 << 20
MAGIC = b"MPSEAL01"
HEADER = struct.Struct(">8s8sI")  # magic, nonce prefix, chunk size
TAG = 16
KEY_BYTES = 32
MAX_CHUNK = 64 << 20  # a header asking for more is refused before any allocation


class ArtifactBroken(Exception):
    """A sealed artifact that does not open: tampered with, truncated, or the wrong key."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_sealed(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=8 * KEY_BYTES)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(4, "big")


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class Sealer:
    """Writes a sealed artifact to ``out`` as plaintext arrives (``write``), then ``close``."""

    def __init__(self, key: bytes, out: Sink, chunk_size: int = CHUNK) -> None:
        if not 0 < chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk size must be in 1..{MAX_CHUNK}")
        self._aead = AESGCM(key)
        self._out = out
        self._chunk = chunk_size
        self._header = HEADER.pack(MAGIC, os.urandom(8), chunk_size)
        self._prefix = self._header[8:16]
        self._buffer = bytearray()
        self._index = 0
        out.write(self._header)

    def _seal(self, data: bytes, final: bool) -> None:
        if self._index >= 1 << 32:
            raise ValueError("artifact too large for one data key")
        nonce = _nonce(self._prefix, self._index)
        self._out.write(self._aead.encrypt(nonce, data, _aad(self._header, self._index, final)))
        self._index += 1

    def write(self, data: bytes) -> None:
        self._buffer += data
        # a chunk is sealed only once more data follows it: the last one carries the final flag
        while len(self._buffer) > self._chunk:
            self._seal(bytes(self._buffer[: self._chunk]), final=False)
            del self._buffer[: self._chunk]

    def close(self) -> None:
        self._seal(bytes(self._buffer), final=True)
        self._buffer.clear()


def open_sealed(key: bytes, f: BinaryIO) -> Iterator[bytes]:
    """The plaintext of the sealed artifact read from ``f``, chunk by chunk; raises
    ``ArtifactBroken`` at the first chunk that does not open (so a caller must not use what came
    before until the iteration ends)."""
    header = f.read(HEADER.size)
    if len(header) != HEADER.size:
        raise ArtifactBroken("the sealed artifact is shorter than its header")
    magic, prefix, chunk_size = HEADER.unpack(header)
    if magic != MAGIC:
        raise ArtifactBroken("the artifact is not sealed (no modelplane header)")
    if not 0 < chunk_size <= MAX_CHUNK:
        raise ArtifactBroken("the sealed artifact's header is damaged")
    aead = AESGCM(key)
    size = chunk_size + TAG
    index = 0
    current = f.read(size)
    while True:
        following = f.read(size) if len(current) == size else b""
        final = not following
        try:
            yield aead.decrypt(_nonce(prefix, index), current, _aad(header, index, final))
        except InvalidTag:
            raise ArtifactBroken(
                f"chunk {index} does not open: the artifact was changed or truncated, or its "
                "data key is not the one it was sealed with"
            ) from None
        if final:
            return
        current, index = following, index + 1


def opens_as(chunks: Iterable[bytes], digest: str) -> bool:
    """Whether a blob's plaintext ``chunks`` open and hash to ``digest``."""
    found = hashlib.sha256()
    try:
        for chunk in chunks:
            found.update(chunk)
    except ArtifactBroken:
        return False
    return found.hexdigest() == digest


def read_artifact(path: Path, digest: str, key: bytes | None) -> bytes:
    """The whole plaintext of an artifact, in memory, checked against its sha256 ``digest``.
    Sealed artifacts need ``key``; plaintext ones (``key`` None) are only hashed."""
    found = hashlib.sha256()
    parts: list[bytes] = []
    with path.open("rb") as f:
        if key is None:
            if f.read(len(MAGIC)) == MAGIC:
                raise ArtifactBroken("the artifact is encrypted and no data key was given")
            f.seek(0)
            chunks: Iterator[bytes] = iter(lambda: f.read(CHUNK), b"")
        else:
            chunks = open_sealed(key, f)
        for chunk in chunks:
            found.update(chunk)
            parts.append(chunk)
    if found.hexdigest() != digest:
        raise ArtifactBroken(
            f"digest mismatch: expected sha256 {digest}, the artifact holds {found.hexdigest()}"
        )
    return b"".join(parts)
