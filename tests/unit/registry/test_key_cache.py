"""The key check cache: keyed by a digest of the token, refusing junk before it is cached or
looked up, and forgetting the least recently used entry when full."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane.domain import Principal, Role
from modelplane.registry.db import make_engine, make_sessions, migrate
from modelplane.registry.keys import KeySpec, KeyStore


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    migrate(engine)
    return KeyStore(make_sessions(engine), cache_entries=3)


class Counting:
    """Counts the database checks a store makes."""

    def __init__(self, store: KeyStore) -> None:
        self.calls: list[str] = []
        check = store._check

        def counted(token: str) -> tuple[Principal | None, float]:
            self.calls.append(token)
            return check(token)

        store._check = counted  # type: ignore[method-assign]  # a probe on the test's own store


def test_the_cache_holds_digests_never_tokens(store: KeyStore) -> None:
    _, secret = store.create(KeySpec(Role.VIEWER, "v"))
    assert store.authenticate(secret) is not None
    assert all(isinstance(k, bytes) and len(k) == 32 for k in store._cache)
    assert secret not in repr(store._cache)


def test_junk_is_refused_before_the_cache_and_the_database(store: KeyStore) -> None:
    counting = Counting(store)
    for junk in ("x" * 5000, "mpk_" + "a" * 300, "Basic abc", "", "not-a-key"):
        assert store.authenticate(junk) is None
    assert counting.calls == []
    assert len(store._cache) == 0
    assert store.authenticate("mpk_abc_def") is None  # well formed: looked up (and cached)
    assert len(counting.calls) == 1


def test_a_full_cache_forgets_the_least_recently_used(store: KeyStore) -> None:
    keys = [store.create(KeySpec(Role.VIEWER, f"k{i}"))[1] for i in range(4)]
    counting = Counting(store)
    for key in keys[:3]:
        assert store.authenticate(key) is not None
    assert store.authenticate(keys[0]) is not None  # a hit: k0 is now the most recent
    assert len(counting.calls) == 3
    assert store.authenticate(keys[3]) is not None  # full: k1 (least recent) goes, not all
    assert len(store._cache) == 3
    for key in (keys[0], keys[2], keys[3]):
        assert store.authenticate(key) is not None
    assert len(counting.calls) == 4  # all three still cached
    assert store.authenticate(keys[1]) is not None
    assert counting.calls[-1] == keys[1]


def test_a_database_away_is_tried_once_a_period_while_known_keys_keep_working(
    tmp_path: Path,
) -> None:
    import time

    from sqlalchemy.exc import OperationalError

    from modelplane.errors import Unavailable

    engine = make_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    migrate(engine)
    store = KeyStore(make_sessions(engine), cache_s=0.2)
    _, secret = store.create(KeySpec(Role.VIEWER, "v"))
    _, unseen = store.create(KeySpec(Role.VIEWER, "w"))
    assert store.authenticate(secret) is not None
    tries: list[str] = []

    def away(token: str) -> tuple[Principal | None, float]:
        tries.append(token)
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    store._check = away  # type: ignore[method-assign]  # the database goes away
    time.sleep(0.25)  # the cached check has expired
    for _ in range(50):
        assert store.authenticate(secret) is not None  # its last check stands
    assert tries == [secret]  # one try for the period, not one per request
    with pytest.raises(Unavailable, match="database cannot be reached"):
        store.authenticate(unseen)  # a key never checked cannot be vouched for
