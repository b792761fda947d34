"""Leader election over the database's lease, on SQLite and PostgreSQL, with a clock the test
moves: one leader at a time, a handover once the lease runs out, the old leader stopping before
the new one starts, and a stale leader unable to publish."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelplane.registry.cluster import CONTROL, ClusterStore, ServerInfo
from modelplane.registry.db import make_engine, make_sessions, migrate
from modelplane.scheduler.leader import Leadership
from modelplane.settings import Settings

pytestmark = pytest.mark.databases


@pytest.fixture
def store(settings: Settings) -> Iterator[ClusterStore]:
    settings.home.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    yield ClusterStore(make_sessions(engine))
    engine.dispose()


async def test_one_leader_then_a_fenced_handover(store: ClusterStore) -> None:
    clock = [1000.0]
    changes: list[tuple[str, bool]] = []

    def server(name: str) -> Leadership:
        return Leadership(store, ServerInfo(name, f"http://{name}", clock[0]), ttl_s=3.0,
                          margin_s=1.0, clock=lambda: clock[0],
                          on_change=lambda leading: changes.append((name, leading)))  # fmt: skip

    a, b = server("a"), server("b")
    assert await a.try_once()
    assert not await b.try_once()
    assert a.lease is not None
    first = a.lease.token
    assert store.publish(CONTROL, [{"name": "iris"}], "a", first)
    assert not store.publish(CONTROL, [], "b", first)  # only the holder writes
    assert [s.id for s in store.servers(0)] == ["a", "b"]

    # a cannot renew (its database is away, say): it stops leading 1 s before the lease ends
    clock[0] += 2.1
    assert not a.leading
    assert not await b.try_once()  # the lease has not run out yet: nobody acts
    clock[0] += 1.0
    assert await b.try_once()
    assert b.lease is not None
    assert b.lease.token == first + 1
    assert not store.publish(CONTROL, [], "a", first)  # the old leader is fenced off
    assert store.publish(CONTROL, [{"name": "iris", "v": 2}], "b", b.lease.token)
    assert store.document(CONTROL) == [{"name": "iris", "v": 2}]
    assert not await a.try_once()
    assert changes == [("a", True), ("b", True), ("a", False)]


async def test_a_clean_stop_hands_over_at_once(store: ClusterStore) -> None:
    clock = [50.0]
    a = Leadership(store, ServerInfo("a", "http://a", 1.0), clock=lambda: clock[0])
    b = Leadership(store, ServerInfo("b", "http://b", 2.0), clock=lambda: clock[0])
    assert await a.try_once()
    await a.stop()
    assert await b.try_once()  # no wait for the lease to run out
    assert [s.id for s in store.servers(0)] == ["b"]
