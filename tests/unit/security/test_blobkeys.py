"""The master key and the data keys it wraps: creation, wrong keys, rotation and its crashes."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from modelplane.artifacts import new_data_key
from modelplane.errors import Conflict
from modelplane.security.blobkeys import BlobKeys, MasterKey, MasterKeyError, load_master_key

D1, D2, D3 = "a" * 64, "b" * 64, "c" * 64


def open_keys(home: Path) -> BlobKeys:
    master, pending = load_master_key(home / "master.key", None)
    return BlobKeys(home / "keys", master, pending)


def test_the_master_key_file_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    first, pending = load_master_key(path, None)
    assert pending is None
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_master_key(path, None)[0] == first
    assert len(first.key) == 32


def test_a_master_key_others_can_read_or_a_malformed_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    load_master_key(path, None)
    os.chmod(path, 0o644)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        load_master_key(path, None)
    with pytest.raises(MasterKeyError, match="MODELPLANE_MASTER_KEY is not 32 bytes"):
        load_master_key(path, "c2hvcnQ=")


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    secret = base64.b64encode(b"k" * 32).decode()
    master, _ = load_master_key(tmp_path / "master.key", secret)
    assert master.key == b"k" * 32
    assert not (tmp_path / "master.key").exists()
    keys = BlobKeys(tmp_path / "keys", master)
    with pytest.raises(Conflict, match="MODELPLANE_MASTER_KEY"):
        keys.rotate()


def test_data_keys_round_trip_and_are_bound_to_their_digest(tmp_path: Path) -> None:
    keys = open_keys(tmp_path)
    key = new_data_key()
    keys.store(D1, key)
    assert keys.get(D1) == key
    assert keys.get(D2) is None
    assert key.hex() not in (tmp_path / "keys" / f"{D1}.key").read_text()
    # a wrapped key moved to another blob does not open there
    (tmp_path / "keys" / f"{D2}.key").write_bytes((tmp_path / "keys" / f"{D1}.key").read_bytes())
    with pytest.raises(MasterKeyError, match="damaged"):
        keys.get(D2)


def test_a_replaced_master_key_fails_at_start_naming_the_file(tmp_path: Path) -> None:
    open_keys(tmp_path).store(D1, new_data_key())
    path = tmp_path / "master.key"
    path.unlink()
    with pytest.raises(MasterKeyError) as caught:
        open_keys(tmp_path)  # a new master key file is made: not the one of these keys
    assert f"the master key in {path} does not open the data keys" in str(caught.value)
    assert "was the file replaced?" in str(caught.value)


def test_rotation_rewraps_every_key_and_replaces_the_file(tmp_path: Path) -> None:
    keys = open_keys(tmp_path)
    stored = {d: new_data_key() for d in (D1, D2, D3)}
    for digest, key in stored.items():
        keys.store(digest, key)
    old = (tmp_path / "master.key").read_bytes()
    assert keys.rotate() == 3
    assert (tmp_path / "master.key").read_bytes() != old
    assert not (tmp_path / "master.key.next").exists()
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    for reopened in (keys, open_keys(tmp_path)):
        assert {d: reopened.get(d) for d in stored} == stored
    (tmp_path / "master.key").write_bytes(old)  # the old key no longer opens anything
    with pytest.raises(MasterKeyError, match="was the file replaced"):
        open_keys(tmp_path)


def test_a_rotation_interrupted_halfway_is_finished_at_the_next_start(tmp_path: Path) -> None:
    keys = open_keys(tmp_path)
    stored = {d: new_data_key() for d in (D1, D2, D3)}
    for digest, key in stored.items():
        keys.store(digest, key)
    # the crash: the new key written, one data key re-wrapped, the file not yet replaced
    new = MasterKey(os.urandom(32), str(tmp_path / "master.key"))
    pending = tmp_path / "master.key.next"
    pending.write_bytes(base64.b64encode(new.key) + b"\n")
    os.chmod(pending, 0o600)
    (tmp_path / "keys" / f"{D1}.key").write_bytes(keys._wrap(new, D1, stored[D1]))

    reopened = open_keys(tmp_path)
    assert not pending.exists()
    assert reopened.master.key == new.key
    assert {d: reopened.get(d) for d in stored} == stored
    for digest in stored:
        doc = json.loads((tmp_path / "keys" / f"{digest}.key").read_text())
        assert doc["master"] == new.check


@pytest.mark.parametrize("content", [b"", b'{"v": 1, "mas', b"\xff\xfe not json", b"[1, 2]"])
def test_a_damaged_key_file_is_named_in_one_line_and_does_not_stop_the_start(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    keys = open_keys(tmp_path)
    key = new_data_key()
    keys.store(D1, key)
    damaged = tmp_path / "keys" / f"{D2}.key"
    damaged.write_bytes(content)  # truncated, not JSON, not a wrapped key
    reopened = open_keys(tmp_path)  # the other blobs stay readable
    assert reopened.get(D1) == key
    assert str(damaged) in caplog.text
    with pytest.raises(MasterKeyError) as caught:
        reopened.get(D2)
    message = str(caught.value)
    assert f"the data key file {damaged} is damaged" in message
    assert "\n" not in message


def test_an_interrupted_rotation_finishes_around_a_damaged_key_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = open_keys(tmp_path)
    stored = {d: new_data_key() for d in (D1, D2)}
    for digest, key in stored.items():
        keys.store(digest, key)
    new = MasterKey(os.urandom(32), str(tmp_path / "master.key"))
    pending = tmp_path / "master.key.next"
    pending.write_bytes(base64.b64encode(new.key) + b"\n")
    os.chmod(pending, 0o600)
    truncated = tmp_path / "keys" / f"{D3}.key"
    truncated.write_bytes(b'{"v": 1, "master": "')
    # a key file that parses but does not open: its old check would refuse the next start
    tampered = tmp_path / "keys" / f"{D2}.key"
    doc = json.loads(tampered.read_text())
    doc["wrapped"] = base64.b64encode(b"x" * 48).decode()
    tampered.write_text(json.dumps(doc))

    reopened = open_keys(tmp_path)
    assert not pending.exists()
    assert reopened.master.key == new.key
    assert reopened.get(D1) == stored[D1]
    assert str(truncated) in caplog.text
    assert str(tampered) in caplog.text
    assert tampered.with_name(tampered.name + ".damaged").exists()  # kept for restoring
    assert reopened.get(D2) is None
    open_keys(tmp_path)  # and the next start starts
