"""The gateways' load summed over every server: what the leader's autoscaler reads, so traffic
through any server scales a deployment, and a request to any server wakes one scaled to zero.

Every server writes its gateway's load per routed deployment to a document of its own every
0.5 s when it changed, and at once when a request waits for a deployment scaled to zero: the
requests in flight, and the busy seconds and completed requests per second over its own last
interval (rates, measured on the writer's clock, so the leader never sees a counter move in
steps). The leader adds up the rates of the servers seen lately and integrates them on its own
clock into counters that grow smoothly, then adds its own gateway's counters: the autoscaler's
samples, whenever they are taken, see the others' traffic at the rate it ran. (Counters read as
written would move once per write, and samples taken at the same period as the writes could
see none of a follower's traffic for long stretches.) The leader reconciles at once when another
server has a request waiting where it had none.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

from modelplane.registry.cluster import ClusterStore
from modelplane.registry.db import DATABASE_DOWN

LOAD_PREFIX = "load:"
EXCHANGE_INTERVAL_S = 0.5
SEEN_WITHIN_S = 10.0  # a server silent longer (killed) adds nothing

Load = tuple[int, float, float]  # requests in flight, busy seconds, completed requests
NONE: Load = (0, 0.0, 0.0)


class GatewayLoad(Protocol):
    def load(self, name: str) -> Load: ...
    def in_flight(self) -> dict[str, int]: ...
    def outstanding(self, replica_id: str) -> int: ...
    def prune(self, replicas: dict[str, str]) -> None: ...


def _add(a: Load, b: Load) -> Load:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


class ClusterLoad:
    def __init__(
        self,
        local: GatewayLoad,
        store: ClusterStore,
        me: str,
        leading: Callable[[], bool],
        on_demand: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``on_demand`` runs on the leader when another server has requests waiting for a
        deployment that had none there."""
        self._local = local
        self._store = store
        self._me = me
        self._leading = leading
        self._on_demand = on_demand
        self._clock = clock
        self._remote: dict[str, Load] = {}  # the others': in flight, busy/s, completed/s
        self._counted: dict[str, tuple[float, float]] = {}  # their rates integrated (busy, done)
        self._counted_at = clock()
        self._written: dict[str, tuple[float, float, float]] = {}  # when, busy, done (ours)
        self._due = asyncio.Event()

    def load(self, name: str) -> Load:
        """``name``'s load through every server (this one's as of now, the others' as of their
        last write)."""
        self._integrate()
        busy, done = self._counted.get(name, (0.0, 0.0))
        return _add(self._local.load(name), (self._remote.get(name, NONE)[0], busy, done))

    def _integrate(self) -> None:
        """Advance the others' counters to now at the rates they last wrote."""
        now = self._clock()
        elapsed, self._counted_at = max(0.0, now - self._counted_at), now
        for name, (_, busy_rate, done_rate) in self._remote.items():
            busy, done = self._counted.get(name, (0.0, 0.0))
            self._counted[name] = (busy + busy_rate * elapsed, done + done_rate * elapsed)

    def outstanding(self, replica_id: str) -> int:
        """Requests this server's gateway has at ``replica_id`` (a replica drains the rest)."""
        return self._local.outstanding(replica_id)

    def prune(self, replicas: dict[str, str]) -> None:
        self._local.prune(replicas)

    def kick(self) -> None:
        """Write this server's load now (a request waits for a deployment scaled to zero)."""
        self._due.set()

    def _mine(self) -> dict[str, list[float]]:
        """This server's load per name: requests in flight now, and busy seconds and completed
        requests per second since the last write (0 for a name new here)."""
        now, doc, written = self._clock(), {}, {}
        for name in sorted(self._local.in_flight()):
            n, busy, done = self._local.load(name)
            before = self._written.get(name)
            written[name] = (now, busy, done)
            if before is None or now <= before[0]:
                doc[name] = [n, 0.0, 0.0]
                continue
            elapsed = now - before[0]  # counters reset with their series count from zero
            busy_rate = max(0.0, busy - before[1]) / elapsed
            done_rate = max(0.0, done - before[2]) / elapsed
            doc[name] = [n, round(busy_rate, 4), round(done_rate, 3)]
        self._written = written
        return doc

    def _others(self) -> dict[str, Load]:
        live = {s.id for s in self._store.servers(self._clock() - SEEN_WITHIN_S)} - {self._me}
        total: dict[str, Load] = {}
        for doc_name, doc in self._store.documents(LOAD_PREFIX).items():
            if doc_name.removeprefix(LOAD_PREFIX) in live:
                for model, (n, busy, done) in doc.items():
                    total[model] = _add(total.get(model, NONE), (int(n), float(busy), float(done)))
        return total

    async def exchange_once(self, last: object) -> object:
        """Write this server's load if it changed since ``last``; on the leader, read the
        others'. Returns what was written (the next ``last``)."""
        mine = self._mine()
        if mine != last:
            await asyncio.to_thread(self._store.put, LOAD_PREFIX + self._me, mine)
        others = await asyncio.to_thread(self._others) if self._leading() else {}
        self._integrate()  # up to now at the old rates; from now at the new ones
        before, self._remote = self._remote, others
        if any(n and not before.get(m, NONE)[0] for m, (n, _, _) in self._remote.items()):
            self._on_demand()
        return mine

    async def run(self) -> None:
        last: object = None
        while True:
            with contextlib.suppress(*DATABASE_DOWN):  # kept as it was; written again later
                last = await self.exchange_once(last)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), timeout=EXCHANGE_INTERVAL_S)
            self._due.clear()
