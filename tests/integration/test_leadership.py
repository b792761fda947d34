"""Leader election over the database's lease, on SQLite and PostgreSQL, with a clock the test
moves: one leader at a time, a handover once the lease runs out, the old leader stopping before
the new one starts, and a stale leader unable to publish."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelplane.domain import Signature
from modelplane.registry.cluster import CONTROL, ClusterStore, ServerInfo
from modelplane.registry.db import make_engine, make_sessions, migrate
from modelplane.scheduler.cluster_load import LOAD_PREFIX, ClusterLoad
from modelplane.scheduler.leader import Leadership, await_successor
from modelplane.serving.routing import Endpoint, Route, route_doc
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


class GatewayFigures:
    """A gateway's load as the controller reads it: set by the test."""

    def __init__(self) -> None:
        self.figures: dict[str, tuple[int, float, int]] = {}

    def load(self, name: str) -> tuple[int, float, int]:
        return self.figures.get(name, (0, 0.0, 0))

    def in_flight(self) -> dict[str, int]:
        return {name: n for name, (n, _, _) in self.figures.items()}

    def outstanding(self, replica_id: str) -> int:
        return 0

    def prune(self, replicas: dict[str, str]) -> None:
        pass


async def test_the_leader_autoscales_on_every_servers_load(store: ClusterStore) -> None:
    """A follower's traffic reaches the leader's autoscaler through the database as rates the
    leader's counters grow at between writes (never in steps), and a request waiting at a
    follower makes the leader reconcile at once; a server gone adds nothing."""
    clock = [1000.0]
    kicked: list[str] = []
    gateways = {name: GatewayFigures() for name in ("a", "b", "c")}
    loads: dict[str, ClusterLoad] = {}

    def exchange(name: str) -> ClusterLoad:
        def on_demand() -> None:
            kicked.append(name)

        return ClusterLoad(gateways[name], store, name, leading=lambda: name == "a",
                           on_demand=on_demand, clock=lambda: clock[0])  # fmt: skip

    async def exchange_all(*names: str) -> None:
        for name in names:
            last[name] = await loads[name].exchange_once(last.get(name))

    last: dict[str, object] = {}
    for name in gateways:
        store.heartbeat(ServerInfo(name, f"http://{name}", clock[0]), clock[0])
        loads[name] = exchange(name)
    gateways["a"].figures["iris"] = (2, 10.0, 100)
    gateways["b"].figures["iris"] = (3, 5.0, 40)
    gateways["c"].figures["iris"] = (1, 1.0, 10)
    await exchange_all("b", "c", "a")
    assert loads["a"].load("iris") == (6, 10.0, 100)  # requests in flight everywhere; no rate yet
    assert kicked == ["a"]  # requests waiting elsewhere: the leader reconciles now

    clock[0] += 2  # b was busy 4 s and answered 40 in 2 s; c 1 s and 10
    gateways["b"].figures["iris"] = (3, 9.0, 80)
    gateways["c"].figures["iris"] = (1, 2.0, 20)
    await exchange_all("b", "c", "a")
    clock[0] += 1  # between writes the leader counts the others at their rates: 2.5 s/s, 25/s
    assert loads["a"].load("iris") == (6, 12.5, 125.0)
    clock[0] += 0.5
    assert loads["a"].load("iris") == (6, 13.75, 137.5)
    assert loads["b"].load("iris") == (3, 9.0, 80)  # a follower knows only its own

    # c is killed (no heartbeat for over 10 s): its rates no longer count; b went idle
    clock[0] += 11
    store.heartbeat(ServerInfo("b", "http://b", 1000.0), clock[0])
    store.heartbeat(ServerInfo("a", "http://a", 1000.0), clock[0])
    gateways["b"].figures["iris"] = (0, 9.0, 80)
    await exchange_all("b", "a")
    idle = loads["a"].load("iris")
    clock[0] += 5
    assert loads["a"].load("iris") == idle
    assert idle[0] == 2  # only a's own requests in flight
    store.leave("b")  # a clean stop takes its documents with it
    assert set(store.documents(LOAD_PREFIX)) == {f"{LOAD_PREFIX}a", f"{LOAD_PREFIX}c"}


async def test_a_stopping_leader_waits_for_its_successor_to_serve(store: ClusterStore) -> None:
    """A leader whose replicas stop with it waits, after giving up its lease, until the next
    leader's routes serve each of its deployments with a replica that is not its own."""
    signature = Signature(inputs=(), outputs=())
    mine = [Route("iris", "iris", "1", signature, 1, (Endpoint("old", "unix:/old"),)),
            Route("idle", "idle", "1", signature, 0)]  # fmt: skip
    lease = store.acquire("b", 3.0, 1000.0)
    assert lease is not None

    def publish(*endpoints: Endpoint) -> None:
        route = Route("iris", "iris", "1", signature, 1, endpoints)
        assert store.publish(CONTROL, {"routes": [route_doc(route)], "view": {}}, "b", lease.token)

    publish(Endpoint("old", "unix:/old"))  # the successor still serves the inherited replica
    assert not await await_successor(store, {"old"}, mine, timeout_s=0.3, interval_s=0.05)
    publish(Endpoint("old", "unix:/old"), Endpoint("new", "unix:/new"))
    assert await await_successor(store, {"old"}, mine, timeout_s=5.0, interval_s=0.05)
