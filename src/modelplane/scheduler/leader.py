"""Which server runs the controller: the holder of the database's lease (``registry/cluster.py``).

Every server tries to take or renew the lease every ``ttl_s / 3`` and writes its heartbeat. A
server leads while its lease has more than ``margin_s`` left by its own clock, so a leader that
cannot reach the database stops acting (at ``expires_at - margin_s``) before any other server
can take the lease (after ``expires_at``): two controllers never act at once. A leader that dies
is followed within ``ttl_s`` plus one try (about 4 s with the defaults); one that stops cleanly
gives the lease up at once.

A follower serves the gateway and the API; its routes come from the leader through the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from modelplane.registry.cluster import CONTROL, ClusterStore, Lease, ServerInfo
from modelplane.registry.db import DATABASE_DOWN
from modelplane.scheduler.view import ControlView
from modelplane.serving.routing import Route, RoutingTable, route_doc, route_from_doc

log = logging.getLogger("modelplane.leader")

TTL_S = 3.0
MARGIN_S = 1.0
FOLLOW_INTERVAL_S = 0.5  # how often a follower reads the leader's routes and view


class Leadership:
    def __init__(
        self,
        store: ClusterStore,
        me: ServerInfo,
        ttl_s: float = TTL_S,
        margin_s: float = MARGIN_S,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._store = store
        self.me = me
        self._ttl = ttl_s
        self._margin = margin_s
        self._clock = clock
        self._on_change = on_change
        self._lease: Lease | None = None
        self._was_leading = False
        self._task: asyncio.Task[None] | None = None

    @property
    def store(self) -> ClusterStore:
        return self._store

    @property
    def lease(self) -> Lease | None:
        """The lease as this server last held it (None: it does not hold it)."""
        return self._lease

    @property
    def leading(self) -> bool:
        lease = self._lease
        return lease is not None and self._clock() < lease.expires_at - self._margin

    async def try_once(self) -> bool:
        """Renew or take the lease, and beat; whether this server leads now.

        ``on_change`` hears only what the database confirmed: this server took the lease
        (True), or another server holds it (False: what this one started is the new leader's
        business now). While the database cannot be reached, ``leading`` turns false by the
        clock and the controller stops acting, but nothing is stopped: replicas and routes
        keep serving, and the lease is taken again when the database is back."""
        now = self._clock()
        try:
            lease = await asyncio.to_thread(self._store.acquire, self.me.id, self._ttl, now)
            await asyncio.to_thread(self._store.heartbeat, self.me, now)
        except DATABASE_DOWN as exc:
            log.warning("cannot reach the database to renew the lease: %s",
                        str(exc).splitlines()[0])  # fmt: skip
            return self.leading
        self._lease = lease
        holds = lease is not None
        if holds != self._was_leading:
            self._was_leading = holds
            if holds:
                log.info("leading: this server runs the controller (lease %d)", self._token())
            else:
                log.warning("another server leads now: the controller stops acting here")
            if self._on_change is not None:
                self._on_change(holds)
        return self.leading

    def _token(self) -> int:
        return self._lease.token if self._lease is not None else 0

    async def run(self) -> None:
        while True:
            try:
                await self.try_once()
            except Exception:
                log.exception("leader election step failed; retrying")
            await asyncio.sleep(self._ttl / 3)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="leadership")

    async def stop(self) -> None:
        """Stop trying; give the lease up and leave the server list (best effort)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(*DATABASE_DOWN):
            if self._lease is not None:
                await asyncio.to_thread(self._store.release, self.me.id, self._clock())
            await asyncio.to_thread(self._store.leave, self.me.id)
        self._lease = None


def share_state(
    store: ClusterStore, leadership: Leadership
) -> Callable[[list[Route], ControlView], None]:
    """What the controller calls with its routes and view: written under this server's lease (a
    server that lost it writes nothing)."""

    def share(routes: list[Route], view: ControlView) -> None:
        lease = leadership.lease
        if lease is None:
            return
        doc = {"routes": [route_doc(r) for r in routes], "view": view.to_doc()}
        if not store.publish(CONTROL, doc, leadership.me.id, lease.token):
            log.warning("not publishing routes: the lease is no longer this server's")

    return share


async def await_successor(
    store: ClusterStore,
    leaving: set[str],
    routes: list[Route],
    timeout_s: float,
    interval_s: float = 0.25,
) -> bool:
    """A leader stopping cleanly, whose replicas stop with it (``leaving``), waits here after
    giving up its lease: until the routes the next leader publishes serve every deployment
    that ``leaving`` served with a replica of their own. False after ``timeout_s``."""
    needed = {r.name for r in routes if any(e.replica_id in leaving for e in r.endpoints)}
    deadline = time.monotonic() + timeout_s
    while needed and time.monotonic() < deadline:
        with contextlib.suppress(*DATABASE_DOWN):
            doc = await asyncio.to_thread(store.document, CONTROL)
            served = {
                d["name"] for d in (doc or {}).get("routes", [])
                if any(replica_id not in leaving for replica_id, _ in d["endpoints"])
            }  # fmt: skip
            needed -= served
        if needed:
            await asyncio.sleep(interval_s)
    return not needed


async def follow_leader(
    store: ClusterStore,
    table: RoutingTable,
    adopt: Callable[[ControlView], None],
    leadership: Leadership,
    interval_s: float = FOLLOW_INTERVAL_S,
) -> None:
    """While another server leads, serve the routes it publishes and show what it saw. With the
    database away the routes held are kept: inference goes on."""
    last: object = None
    while True:
        if leadership.leading:
            last = None  # the controller here publishes; read again after a handover
        else:
            try:
                doc = await asyncio.to_thread(store.document, CONTROL)
            except DATABASE_DOWN:
                doc = last
            if doc is not None and doc != last:
                table.publish([route_from_doc(d) for d in doc["routes"]])
                adopt(ControlView.from_doc(doc["view"]))
                last = doc
        await asyncio.sleep(interval_s)
