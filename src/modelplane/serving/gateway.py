"""The gateway: checks routes, bounds queues, picks a replica (least outstanding requests),
forwards bytes. It never decodes tensors; the replica does that once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from modelplane.errors import (
    DeadlineExceeded,
    ModelplaneError,
    NotFound,
    Overloaded,
    Unavailable,
)
from modelplane.protocol import frames
from modelplane.protocol.answers import agreement, decode_outputs
from modelplane.serving.replica_client import ReplicaConnection, ReplicaGone
from modelplane.serving.routing import Canary, Endpoint, Route, RoutingTable
from modelplane.serving.watch import VersionWatch
from modelplane.telemetry.metrics import Metrics, RequestSeries

log = logging.getLogger("modelplane.gateway")

COLD_START_POLL_S = 0.02
MAX_COPIES = 64  # shadow and comparison copies in flight; beyond, copies are shed


def never_deployed(name: str) -> str:
    """What a name never deployed answers (and one outside a key's scope, identically)."""
    return (
        f"model {name!r} is not deployed; deploy a model under this name with `modelplane "
        f"deploy {name}` (or `modelplane deploy MODEL --name {name}`); see `modelplane "
        "deployments list`"
    )


@dataclass(frozen=True, slots=True)
class Forwarded:
    status: int
    body: bytes
    header_length: int | None
    outlier: str = ""  # an input the replica flagged (input_guard=flag)


def _flagged(reply: frames.ResponseFrame) -> Forwarded:
    name, _, payload = reply.payload.partition(b"\0")
    outlier = name.decode("ascii", "replace")
    return Forwarded(reply.status & ~frames.OUTLIER, payload, reply.header_len, outlier)


class Gateway:
    def __init__(
        self,
        table: RoutingTable,
        token: str,
        timeout_s: float,
        metrics: Metrics,
        replica_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.table = table
        self._replica_tls = replica_tls
        self._metrics = metrics
        self.traffic: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._token = token
        self._timeout = timeout_s
        self._connections: dict[str, ReplicaConnection] = {}
        self._connecting: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._outstanding: defaultdict[str, int] = defaultdict(int)
        self._queued: defaultdict[str, int] = defaultdict(int)
        self.on_demand: Callable[[], None] = lambda: None
        self.watch = VersionWatch()
        self._splits: dict[str, int] = {}  # requests split so far per name (the exact share)
        self._copies: set[asyncio.Task[None]] = set()

    # ---- what the controller reads (autoscaling and draining) ---------------------------------
    def load(self, name: str) -> tuple[int, float, int]:
        """Requests in flight now, busy seconds and completed requests so far for ``name``
        (the latency histograms' sums and counts over its versions)."""
        served = self._metrics.model_requests(name)
        busy = sum(series.latency.sum for series in served)
        done = sum(series.latency.count for series in served)
        return (self._queued.get(name, 0), busy, done)

    def in_flight(self) -> dict[str, int]:
        """Requests in flight (held, queued or at a replica) per routed name."""
        return {name: self._queued.get(name, 0) for name in self.table.routes}

    def outstanding(self, replica_id: str) -> int:
        return self._outstanding.get(replica_id, 0)

    def prune(self, replicas: dict[str, str]) -> None:
        """Forget replicas that no longer exist (``replicas``: id -> url of those that do, in
        routes or draining) and routes that are gone, with their connections and series, so
        churn (autoscaling, updates) does not grow memory."""
        replica_ids, live_urls = set(replicas), set(replicas.values())
        for rid in [r for r, n in self._outstanding.items() if r not in replica_ids and not n]:
            del self._outstanding[rid]
        for rid in [r for r in self.traffic if r not in replica_ids]:
            del self.traffic[rid]
        for url in [u for u in self._connections if u not in live_urls]:
            self._connections.pop(url).close()
            self._connecting.pop(url, None)
        names = set(self.table.routes)
        self._metrics.forget_requests(names)
        split = {n for n, r in self.table.routes.items() if r.canary is not None}
        self.watch.prune(split)
        for name in [n for n in self._splits if n not in split]:
            del self._splits[name]
        for name in [n for n, q in self._queued.items() if n not in names and not q]:
            del self._queued[name]

    def route(self, name: str, version: str | None) -> Route:
        route = self.table.get(name)
        if route is None:
            raise NotFound(self._not_deployed(name))
        if version is None:
            return route
        pinned = route.pinned(version)
        if pinned is None:
            raise NotFound(
                f"version {version} of model {name!r} is not deployed (deployed: "
                f"{', '.join(route.versions())})"
            )
        return pinned

    def _not_deployed(self, name: str) -> str:
        was = self.table.retired.get(name)
        if was is not None:
            model = was.partition(":")[0]
            again = f"modelplane deploy {was}" + (f" --name {name}" if model != name else "")
            return (
                f"model {name!r} is not deployed (it was a deployment of {was}); deploy it "
                f"again with `{again}` and the flags it had"
            )
        return never_deployed(name)

    async def _connection(self, endpoint: Endpoint) -> ReplicaConnection:
        connection = self._connections.get(endpoint.url)
        if connection is not None and connection.open:
            return connection
        async with self._connecting[endpoint.url]:
            connection = self._connections.get(endpoint.url)
            if connection is None or not connection.open:
                connection = await ReplicaConnection.connect(
                    endpoint.url, self._token, tls=self._replica_tls
                )
                self._connections[endpoint.url] = connection
        return connection

    def _pick(self, route: Route, exclude: set[str]) -> Endpoint | None:
        best: Endpoint | None = None
        best_load = 0
        for endpoint in route.endpoints:
            if endpoint.replica_id in exclude:
                continue
            load = self._outstanding[endpoint.replica_id]
            if best is None or load < best_load:
                best, best_load = endpoint, load
        return best

    def _admit(self, route: Route, series: RequestSeries) -> None:
        """Count a request in flight for ``route``, or refuse it (429) at the route's limit."""
        if self._queued[route.name] >= route.max_queued:
            series.count(429)
            raise Overloaded(
                f"model {route.name!r} has {route.max_queued} requests in flight, its limit; "
                "retry after a moment"
            )
        self._queued[route.name] += 1

    def _settle(self, route: Route, series: RequestSeries, status: int, started: float) -> None:
        """A request ``_admit`` let in has ended with ``status``."""
        self._queued[route.name] -= 1
        series.count(status)
        series.latency.observe(time.perf_counter() - started)

    async def infer(
        self,
        route: Route,
        body: bytes,
        header_length: int | None,
        request_id: str = "",
        sticky: bool = False,
    ) -> Forwarded:
        """Forward an inference to a ready replica of the route's version, or of its canary
        for the canary's share of requests (by the request id's hash with ``sticky``). Excess
        load gets 429 at once; a replica that goes away before answering is retried once on
        another of the same version."""
        canary = route.canary
        if canary is None:
            return await self._answer(route, body, header_length, request_id)
        chosen = self._choose(route, canary, request_id if sticky else "")
        started = time.perf_counter()
        status = 500
        try:
            result = await self._answer(chosen, body, header_length, request_id)
            status = result.status
        except ModelplaneError as exc:
            status = exc.status
            raise
        finally:
            self.watch.record(route.name, chosen.version, time.perf_counter() - started, status)
        if status == 200:
            self._copy(route, canary, chosen, body, header_length, result)
        return result

    def _choose(self, route: Route, canary: Canary, key: str) -> Route:
        """The version that answers: the canary for exactly its share of requests (every
        n-th), or by the key's hash (the same key, the same version while the split holds)."""
        to_canary = False
        if canary.endpoints and canary.percent > 0 and not canary.shadow:
            if key:
                to_canary = zlib.crc32(key.encode()) % 10_000 < canary.percent * 100
            else:
                n = self._splits[route.name] = self._splits.get(route.name, 0) + 1
                basis = round(canary.percent * 100)
                to_canary = n * basis // 10_000 != (n - 1) * basis // 10_000
        return route.pinned(canary.version if to_canary else route.version) or route

    def _copy(
        self,
        route: Route,
        canary: Canary,
        chosen: Route,
        body: bytes,
        header_length: int | None,
        answer: Forwarded,
    ) -> None:
        """A shadow gets a copy of every request its version did not answer; a rollout's
        canary answers are checked against the current version's (a copy goes there). Off the
        request's path; shed when too many copies are in flight."""
        if canary.shadow and chosen.version == route.version:
            other, shadow = route.pinned(canary.version), True
        elif canary.compare and chosen.version == canary.version:
            other, shadow = route.pinned(route.version), False
        else:
            return
        if other is None or not other.endpoints:
            return
        if len(self._copies) >= MAX_COPIES:
            self.watch.shed += 1
            return
        task = asyncio.create_task(self._compare(route.name, other, body, header_length,
                                                 answer, shadow))  # fmt: skip
        self._copies.add(task)
        task.add_done_callback(self._copies.discard)

    async def _compare(
        self,
        name: str,
        other: Route,
        body: bytes,
        header_length: int | None,
        answer: Forwarded,
        shadow: bool,
    ) -> None:
        started = time.perf_counter()
        status = 500
        try:
            copy = await self._answer(other, body, header_length, "")
            status = copy.status
        except ModelplaneError as exc:
            status = exc.status
            return
        finally:
            if shadow:  # the shadow's own latency and errors; the current version's are known
                self.watch.record(name, other.version, time.perf_counter() - started, status)
        if status != 200:
            return
        current, candidate = (answer, copy) if shadow else (copy, answer)
        try:
            found = agreement(decode_outputs(current.body, current.header_length),
                              decode_outputs(candidate.body, candidate.header_length))  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("could not compare the answers of %s's versions: %s", name, exc)
            return
        self.watch.compared(name, found)

    async def _answer(
        self, route: Route, body: bytes, header_length: int | None, request_id: str
    ) -> Forwarded:
        series = self._metrics.requests(route.name, route.version)
        self._admit(route, series)
        started = time.perf_counter()
        status = 500
        try:
            result = await self._forward(route, body, header_length, request_id)
            status = result.status
            return result
        except ModelplaneError as exc:
            status = exc.status
            raise
        finally:
            self._settle(route, series, status, started)

    async def _forward(
        self, route: Route, body: bytes, header_length: int | None, request_id: str
    ) -> Forwarded:
        tried: set[str] = set()
        deadline_ms = int(self._timeout * 1000)
        if not route.endpoints and route.cold_start_s > 0:
            route = await self._wait_for_replica(route)
        for _attempt in range(2):
            route = self._latest(route)  # the latest snapshot: drains apply
            endpoint = self._pick(route, tried)
            if endpoint is None:
                break
            tried.add(endpoint.replica_id)
            self._outstanding[endpoint.replica_id] += 1
            try:
                connection = await self._connection(endpoint)
                reply = await connection.request(
                    frames.INFER, body, header_length, deadline_ms, self._timeout + 1.0,
                    request_id,
                )  # fmt: skip
            except ReplicaGone:
                continue
            except TimeoutError:
                raise DeadlineExceeded(
                    f"model {route.name!r} did not answer within {self._timeout:g}s"
                ) from None
            finally:
                self._outstanding[endpoint.replica_id] -= 1
            if reply.status == frames.DRAINING:
                continue  # shutting down, it ran nothing: the next replica takes it
            counts = self.traffic[endpoint.replica_id]
            counts[0] += len(body)
            counts[1] += len(reply.payload)
            if reply.status & frames.OUTLIER:
                return _flagged(reply)
            return Forwarded(reply.status, reply.payload, reply.header_len)
        raise Unavailable(
            f"model {route.name!r} has no ready replica ({len(route.endpoints)} of "
            f"{route.desired} ready); retry shortly or check `modelplane deployments status "
            f"{route.name}`"
        )

    async def generate(
        self, route: Route, payload: bytes, request_id: str = ""
    ) -> AsyncGenerator[list[frames.ResponseFrame], None]:
        """Stream a GENERATE from a ready replica, in batches of the frames that have arrived:
        PARTIAL frames, then the final one. A replica
        that goes away before its first frame is retried once on another; leaving the iteration
        early cancels the generation on the replica."""
        series = self._metrics.requests(route.name, route.version)
        self._admit(route, series)
        started = time.perf_counter()
        status = 499  # the client left before the end, unless something else is known
        try:
            if not route.endpoints and route.cold_start_s > 0:
                route = await self._wait_for_replica(route)
            tried: set[str] = set()
            for _attempt in range(2):
                route = self._latest(route)
                endpoint = self._pick(route, tried)
                if endpoint is None:
                    break
                tried.add(endpoint.replica_id)
                self._outstanding[endpoint.replica_id] += 1
                received = False
                try:
                    connection = await self._connection(endpoint)
                    stream = connection.stream(
                        frames.GENERATE, payload, int(self._timeout * 1000), request_id,
                        idle_s=self._timeout,
                    )  # fmt: skip
                    # closed on leaving, whatever the reason: that sends CANCEL to the replica
                    bounced = False
                    async with contextlib.aclosing(stream):
                        async for batch in stream:
                            if not received and batch[-1].status == frames.DRAINING:
                                bounced = True  # shutting down, it started nothing
                                break
                            received = True
                            if batch[-1].status != frames.PARTIAL:
                                status = batch[-1].status
                            yield batch
                    if bounced:
                        continue
                    return
                except TimeoutError:
                    status = 504
                    raise DeadlineExceeded(
                        f"model {route.name!r} sent nothing for {self._timeout:g}s while "
                        "generating; the generation was stopped"
                    ) from None
                except ReplicaGone:
                    if received:
                        status = 502
                        raise Unavailable(
                            f"model {route.name!r}'s replica went away while generating; retry"
                        ) from None
                    continue
                finally:
                    self._outstanding[endpoint.replica_id] -= 1
            status = 503
            raise Unavailable(
                f"model {route.name!r} has no ready replica ({len(route.endpoints)} of "
                f"{route.desired} ready); retry shortly or check `modelplane deployments status "
                f"{route.name}`"
            )
        except ModelplaneError as exc:
            status = exc.status
            raise
        finally:
            self._settle(route, series, status, started)

    def _latest(self, route: Route) -> Route:
        """``route`` in the latest snapshot; one pinned to a version stays on it (the version
        gone since: its replicas, draining, finish what they were sent)."""
        latest = self.table.get(route.name)
        if latest is None:
            return route
        if not route.fixed:
            return latest
        return latest.pinned(route.version) or route

    async def _wait_for_replica(self, route: Route) -> Route:
        """Hold a request for a scaled-to-zero deployment while its first replica starts. A
        replica that cannot be placed fails the request at once, with the reason, once a plan
        made after this demand says so (an older one may predate room freed since)."""
        asked = time.monotonic()
        self.on_demand()
        deadline = asked + min(route.cold_start_s, self._timeout)
        while time.monotonic() < deadline:
            latest = self.table.get(route.name)
            if latest is None:
                break
            if latest.endpoints:
                return latest
            if latest.pending and latest.planned_at >= asked:
                raise Unavailable(
                    f"model {route.name!r} is scaled to zero and its replica cannot be placed: "
                    f"{latest.pending}; free room (`modelplane nodes list`) or deploy it with "
                    "less (--cpu, --memory)"
                )
            await asyncio.sleep(COLD_START_POLL_S)
        raise Unavailable(
            f"model {route.name!r} is scaled to zero and no replica became ready within "
            f"{min(route.cold_start_s, self._timeout):g}s; check `modelplane deployments status "
            f"{route.name}`"
        )

    async def replica_stats(self, route: Route) -> list[tuple[Endpoint, dict[str, Any] | None]]:
        """Each ready replica's counters (None where it did not answer)."""
        results: list[tuple[Endpoint, dict[str, Any] | None]] = []
        for endpoint in route.endpoints:
            try:
                connection = await self._connection(endpoint)
                reply = await connection.request(frames.STATS, b"", None, 0, 5.0)
                results.append((endpoint, orjson.loads(reply.payload)))
            except (ReplicaGone, TimeoutError):
                results.append((endpoint, None))
        return results

    async def stats(self, route: Route) -> dict[str, Any]:
        """Counts summed over the route's ready replicas, in Triton's statistics shape."""
        inference = execution = failure = 0
        batches: Counter[int] = Counter()
        request_ns = compute_ns = queue_ns = 0
        for _, doc in await self.replica_stats(route):
            if doc is None:
                continue
            inference += doc["inference_count"]
            execution += doc["execution_count"]
            failure += doc["failure_count"]
            batches.update({int(k): v for k, v in doc["batch_sizes"].items()})
            request_ns += int(doc["request_seconds"]["sum"] * 1e9)
            compute_ns += int(doc.get("compute_seconds", {}).get("sum", 0) * 1e9)
            queue_ns += int(doc.get("queue_seconds", {}).get("sum", 0) * 1e9)
        return {
            "name": route.name,
            "version": route.version,
            "inference_count": inference,
            "execution_count": execution,
            "inference_stats": {
                "success": {"count": inference - failure, "ns": request_ns},
                "fail": {"count": failure},
                "queue": {"count": inference, "ns": queue_ns},
                "compute_infer": {"count": execution, "ns": compute_ns},
            },
            "batch_stats": [
                {"batch_size": size, "compute_infer": {"count": count}}
                for size, count in sorted(batches.items())
            ],
        }

    async def close(self) -> None:
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            connection.close()
