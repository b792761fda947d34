"""The sealed artifact format: chunked AES-256-GCM that detects every change."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from modelplane.artifacts import (
    HEADER,
    TAG,
    ArtifactBroken,
    Sealer,
    new_data_key,
    open_sealed,
    read_artifact,
)

CHUNK = 64


def seal(data: bytes, key: bytes, chunk: int = CHUNK) -> bytes:
    out = io.BytesIO()
    sealer = Sealer(key, out, chunk)
    for i in range(0, len(data), 7):  # writes that do not line up with chunks
        sealer.write(data[i : i + 7])
    sealer.close()
    return out.getvalue()


def unseal(sealed: bytes, key: bytes) -> bytes:
    return b"".join(open_sealed(key, io.BytesIO(sealed)))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_round_trip(size: int) -> None:
    key, data = new_data_key(), os.urandom(size)
    sealed = seal(data, key)
    chunks = max(1, -(-size // CHUNK))
    assert len(sealed) == HEADER.size + size + chunks * TAG
    assert unseal(sealed, key) == data


def test_the_same_plaintext_seals_differently_and_hides_it() -> None:
    key = new_data_key()
    data = b"float_input" * 50
    first, second = seal(data, key), seal(data, key)
    assert first != second  # a random nonce prefix per artifact
    assert b"float_input" not in first


def test_one_changed_byte_anywhere_fails() -> None:
    key = new_data_key()
    sealed = bytearray(seal(os.urandom(3 * CHUNK), key))
    for position in (0, 9, HEADER.size - 1, HEADER.size, HEADER.size + CHUNK + 3, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        with pytest.raises(ArtifactBroken):
            unseal(bytes(tampered), key)


def test_truncation_is_detected_at_a_chunk_boundary_and_inside_a_chunk() -> None:
    key = new_data_key()
    sealed = seal(os.urandom(3 * CHUNK), key)
    whole_chunks = HEADER.size + 2 * (CHUNK + TAG)
    for cut in (whole_chunks, whole_chunks + 10, HEADER.size, HEADER.size + CHUNK + TAG, 5):
        with pytest.raises(ArtifactBroken):
            unseal(sealed[:cut], key)


def test_reordered_or_dropped_chunks_fail() -> None:
    key = new_data_key()
    sealed = seal(os.urandom(3 * CHUNK), key)
    head, body = sealed[: HEADER.size], sealed[HEADER.size :]
    size = CHUNK + TAG
    one, two, three = body[:size], body[size : 2 * size], body[2 * size :]
    for order in (two + one + three, one + three, two + three):
        with pytest.raises(ArtifactBroken):
            unseal(head + order, key)


def test_a_wrong_key_fails() -> None:
    sealed = seal(b"model", new_data_key())
    with pytest.raises(ArtifactBroken, match="does not open"):
        unseal(sealed, new_data_key())


def test_a_header_asking_for_huge_chunks_is_refused() -> None:
    sealed = bytearray(seal(b"model", new_data_key()))
    sealed[16:20] = (1 << 31).to_bytes(4, "big")
    with pytest.raises(ArtifactBroken, match="header"):
        unseal(bytes(sealed), new_data_key())


def test_read_artifact_verifies_the_plaintext_digest(tmp_path: Path) -> None:
    key, data = new_data_key(), os.urandom(1000)
    path = tmp_path / "blob"
    path.write_bytes(seal(data, key, 1 << 20))
    digest = hashlib.sha256(data).hexdigest()
    assert read_artifact(path, digest, key) == data
    with pytest.raises(ArtifactBroken, match="digest mismatch"):
        read_artifact(path, "0" * 64, key)
    with pytest.raises(ArtifactBroken, match="no data key"):
        read_artifact(path, digest, None)
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    assert read_artifact(plain, digest, None) == data
