"""The level-triggered reconcile loop: read desired state, observe replicas and nodes, autoscale,
place, act, publish routes. Every decision comes from the pure policies in ``planning``,
``placement`` and ``autoscaling``; this module only carries them out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from modelplane.cluster.executor import ReplicaExecutor, ReplicaSpec
from modelplane.domain import Deployment, Node, NodeState, Replica, ReplicaState, SplitMode
from modelplane.errors import redact_paths
from modelplane.registry.deployments import DeploymentRecord, DeploymentStore
from modelplane.registry.nodes import Cordon, NodeStore
from modelplane.scheduler import autoscaling
from modelplane.scheduler.planning import Desired, Drain, Pending, Start, Stop, plan
from modelplane.scheduler.rollouts import Rollouts
from modelplane.scheduler.view import ControlView
from modelplane.serving.routing import Canary, Endpoint, Route, RoutingTable
from modelplane.telemetry.logs import now_iso

log = logging.getLogger("modelplane.controller")

DRAIN_GRACE_S = 0.5  # a draining replica outlives its last route by at least this


class LoadSource(Protocol):
    """What the gateway tells the controller about traffic (for draining and autoscaling)."""

    def load(self, deployment: str) -> tuple[int, float, float]:
        """(requests in flight now, busy seconds so far, requests completed so far)."""
        ...

    def outstanding(self, replica_id: str) -> int: ...

    def prune(self, replicas: dict[str, str]) -> None:
        """Forget what it keeps about replicas (id -> url of those alive) and routes gone."""
        ...


class NoLoad:
    def load(self, deployment: str) -> tuple[int, float, float]:
        return (0, 0.0, 0)

    def outstanding(self, replica_id: str) -> int:
        return 0

    def prune(self, replicas: dict[str, str]) -> None:
        pass


UP = (NodeState.HEALTHY, NodeState.CORDONED, NodeState.DRAINING)


def under_maintenance(node: Node, cordon: Cordon | None) -> Node:
    """A node that is up, in the state an operator's cordon (or none) leaves it."""
    if node.state not in UP:
        return node
    state = NodeState.HEALTHY
    if cordon is not None:
        state = NodeState.DRAINING if cordon.drain else NodeState.CORDONED
    return node if state == node.state else replace(node, state=state)


@dataclass(slots=True)
class _Draining:
    since: float
    reason: str
    deployment: str


class Controller:
    def __init__(
        self,
        deployments: DeploymentStore,
        executor: ReplicaExecutor,
        table: RoutingTable,
        blob_path: Callable[[str], Path],
        *,
        interval_s: float = 1.0,
        max_starts_per_minute: int = 5,
        drain_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_step: Callable[[float], None] | None = None,
        load: LoadSource | None = None,
        nodes: NodeStore | None = None,
        may_act: Callable[[], bool] | None = None,
        share: Callable[[list[Route], ControlView], None] | None = None,
        rollouts: Rollouts | None = None,
    ) -> None:
        """``may_act`` says whether this server leads (None: always); ``share`` writes the
        routes and the view for the other servers (run in a thread when they change);
        ``rollouts`` moves rollouts along (None: judged on nothing measured)."""
        self._rollouts = rollouts or Rollouts(deployments)
        self._may_act = may_act or (lambda: True)
        self._share = share
        self._shared: tuple[list[Route], ControlView] | None = None
        self._node_store = nodes
        self._cordons: dict[str, Cordon] = {}
        self._on_step = on_step
        self._deployments = deployments
        self._executor = executor
        self._table = table
        self._blob_path = blob_path
        self._interval = interval_s
        self._max_starts = max_starts_per_minute
        self._drain_timeout = drain_timeout_s
        self._clock = clock
        self.load: LoadSource = load or NoLoad()
        # failures per deployment in the last minute: a crash loop backs off, a healthy
        # scale-up or rolling update of many replicas does not
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)
        self._counted: set[str] = set()
        self._wake = asyncio.Event()
        self._observed: list[Replica] = []
        self._live_ids: set[str] = set()
        self._nodes: list[Node] = []
        self._draining: dict[str, _Draining] = {}
        self._pending: dict[str, list[str]] = {}
        self._acted_on: dict[str, datetime] = {}  # each deployment's updated_at at the last plan
        self._placements: dict[str, str] = {}
        self._scale: dict[str, autoscaling.ScaleState] = {}
        self._load_seen: dict[str, tuple[float, float, float]] = {}
        self._last_failure: dict[str, str] = {}
        self._failure_logged: set[str] = set()  # replicas whose failure the log has
        self._events: deque[dict[str, Any]] = deque(maxlen=1000)
        self._task: asyncio.Task[None] | None = None
        # what the API and the dashboard read: what the leader saw at its last step (built
        # here when leading, adopted from the leader's document when following)
        self.view = ControlView()
        # endpoints of the previous leader's replicas, served until this server's own are
        # ready (a clean handover with replicas that stop with their server), until a deadline
        self._inherited: dict[str, tuple[Endpoint, ...]] = {}
        self._inherited_until = 0.0

    def _event(self, deployment: str, action: str, replica: str, reason: str) -> None:
        self._events.append({"time": now_iso(), "deployment": deployment, "action": action,
                             "replica": replica, "reason": reason})  # fmt: skip

    def adopt(self, view: ControlView) -> None:
        """Show what the leader saw (this server follows)."""
        self.view = view

    def _build_view(self) -> ControlView:
        return ControlView(
            replicas=tuple(self._observed), nodes=tuple(self._nodes),
            pending={k: list(v) for k, v in self._pending.items()},
            acted_on=dict(self._acted_on), placements=dict(self._placements),
            scale={k: v.replicas for k, v in self._scale.items()},
            events=tuple(self._events), failures=dict(self._last_failure),
            cordons=dict(self._cordons), rollouts=dict(self._rollouts.status),
        )  # fmt: skip

    def kick(self) -> None:
        """Reconcile now instead of at the next tick (after a deploy, say)."""
        self._wake.set()

    def inherit(self, routes: dict[str, Route]) -> None:
        """This server now leads: keep serving the previous leader's replicas (``routes``, as
        followed) for each deployment until replicas of its own are ready, at most the drain
        timeout (its predecessor stops them once this server's are ready, or when it dies)."""
        self._inherited = {name: r.endpoints for name, r in routes.items() if r.endpoints}
        self._inherited_until = self._clock() + self._drain_timeout

    # ---- the loop ---------------------------------------------------------------------------
    async def step(self) -> None:
        # what the gateway compares with a request's arrival: time.monotonic, not self._clock
        planned_at = time.monotonic()
        records = await asyncio.to_thread(self._deployments.list)
        if self._node_store is not None:
            self._cordons = await asyncio.to_thread(self._node_store.all)
        observed = await self._observe(with_nodes=True)
        await self._finish_draining({r.id: r.state for r in observed})
        observed = [r for r in observed if r.id in self._live_ids]
        if await self._rollouts.step(records, observed, self._event):
            records = await asyncio.to_thread(self._deployments.list)  # as the rollout left it
        by_name = {r.deployment.name: r for r in records}
        owners = {r.id: r.deployment for r in observed}
        desired = [self._desired(r) for r in records]
        actions = plan(desired, observed, self._nodes, self._start_budget(desired))
        pending: defaultdict[str, list[str]] = defaultdict(list)
        if not self._may_act():
            return  # the lease ran out while this step observed: another server acts now
        for action in actions:
            if isinstance(action, Stop):
                owner = owners.get(action.replica_id, "")
                await self._stop(action.replica_id, action.reason, owner)
            elif isinstance(action, Drain):
                owner = owners.get(action.replica_id, "")
                self._draining[action.replica_id] = _Draining(self._clock(), action.reason, owner)
                self._event(owner, "drain", action.replica_id, action.reason)
                log.info("draining replica %s: %s", action.replica_id, action.reason)
            elif isinstance(action, Start):
                await self._start(by_name[action.deployment], action)
            elif isinstance(action, Pending):
                pending[action.deployment].append(action.reason)
        self._note_pending(pending)
        self._acted_on = {r.deployment.name: r.deployment.updated_at for r in records}
        if any(not isinstance(a, Pending) for a in actions):
            observed = await self._observe(with_nodes=False)  # nodes were probed this step
        self._observed = observed
        self._forget(by_name)
        records = await self._note_stable(records, observed)
        routes = self._publish(records, observed, planned_at)
        self.view = self._build_view()
        await self._share_state(routes, self.view)
        self.load.prune({r.id: r.url for r in observed})

    async def _observe(self, with_nodes: bool) -> list[Replica]:
        if with_nodes:
            observed, nodes = await asyncio.gather(self._executor.observe(), self._executor.nodes())
            self._nodes = [under_maintenance(n, self._cordons.get(n.id)) for n in nodes]
        else:
            observed = await self._executor.observe()
        observed = [self._for_clients(r) for r in observed]
        self._live_ids = {r.id for r in observed}
        self._counted &= self._live_ids
        self._failure_logged &= self._live_ids
        self._placements = {k: v for k, v in self._placements.items() if k in self._live_ids}
        for replica in observed:
            if replica.state == ReplicaState.FAILED and replica.message:
                self._last_failure[replica.deployment] = replica.message
            failing = replica.state in (ReplicaState.FAILED, ReplicaState.UNHEALTHY)
            if failing and replica.id not in self._counted:
                self._counted.add(replica.id)
                self._failures[replica.deployment].append(self._clock())
        return [
            replace(r, state=ReplicaState.DRAINING)
            if r.id in self._draining and r.state != ReplicaState.FAILED
            else r
            for r in observed
        ]

    def _for_clients(self, replica: Replica) -> Replica:
        """The replica as the API shows it: its message without server paths (logged whole,
        once, when the replica fails)."""
        if not replica.message:
            return replica
        shown = redact_paths(replica.message)
        if replica.state == ReplicaState.FAILED and replica.id not in self._failure_logged:
            self._failure_logged.add(replica.id)
            log.warning("replica %s of %s failed: %s", replica.id, replica.deployment,
                        replica.message)  # fmt: skip
        return replica if shown == replica.message else replace(replica, message=shown)

    async def _finish_draining(self, states: dict[str, ReplicaState]) -> None:
        """Stop draining replicas once their in-flight requests are done (or time is up)."""
        now = self._clock()
        for replica_id, drain in list(self._draining.items()):
            state = states.get(replica_id)
            idle = self.load.outstanding(replica_id) == 0
            done = now - drain.since >= DRAIN_GRACE_S and idle
            if state is None or state == ReplicaState.FAILED or done:
                await self._stop(replica_id, drain.reason, drain.deployment)
            elif now - drain.since > self._drain_timeout:
                await self._stop(replica_id, f"{drain.reason}; drain timed out", drain.deployment)

    async def _stop(self, replica_id: str, reason: str, owner: str) -> None:
        log.info("stopping replica %s: %s", replica_id, reason)
        self._let_go(replica_id, "stop", reason, owner)
        await self._executor.stop(replica_id)

    def _let_go(self, replica_id: str, kind: str, reason: str, owner: str) -> None:
        self._event(owner, kind, replica_id, reason)
        self._draining.pop(replica_id, None)
        self._placements.pop(replica_id, None)
        self._live_ids.discard(replica_id)

    def _desired(self, record: DeploymentRecord) -> Desired:
        d = record.deployment
        replicas = d.replicas
        if d.autoscaling is not None:
            replicas = self._autoscale(d)
        else:
            self._scale.pop(d.name, None)
        fallback = candidate = None
        if record.stable is not None:
            s = record.stable.deployment
            fallback = Desired(s.name, s.revision, 1, s.resources, s.placement)
        if record.candidate is not None and record.split is not None and replicas > 0:
            # its share of the replicas (at least one); a shadow's copies may be shed: one
            c, split = record.candidate.deployment, record.split
            share = 0.0 if split.mode == SplitMode.SHADOW else split.percent
            count = max(1, math.ceil(replicas * share / 100))
            candidate = Desired(c.name, c.revision, count, c.resources, c.placement)
        return Desired(d.name, d.revision, replicas, d.resources, d.placement, fallback, candidate)

    async def _note_stable(
        self, records: list[DeploymentRecord], observed: list[Replica]
    ) -> list[DeploymentRecord]:
        """Persist each deployment's revision as its last good one once a replica of it is
        ready (the revision a restart serves while a newer one is not)."""
        ready = {(r.deployment, r.revision) for r in observed if r.state == ReplicaState.READY}
        noted = []
        for record in records:
            d = record.deployment
            ready_now = not record.served and (d.name, d.revision) in ready
            if ready_now and await asyncio.to_thread(
                self._deployments.mark_stable, d.name, d.revision
            ):
                record = replace(record, stable=None, served=True)
            noted.append(record)
        return noted

    def _autoscale(self, d: Deployment) -> int:
        policy = d.autoscaling
        assert policy is not None
        now = self._clock()
        in_flight, busy, completed = self.load.load(d.name)
        seen = self._load_seen.get(d.name)
        self._load_seen[d.name] = (now, busy, completed)
        ongoing, latency = float(in_flight), None
        if seen is not None and now > seen[0]:
            ongoing = max(ongoing, (busy - seen[1]) / (now - seen[0]))
            if completed > seen[2]:
                latency = 1000 * (busy - seen[1]) / (completed - seen[2])
        state = self._scale.get(d.name) or autoscaling.initial(policy, d.replicas)
        decided = autoscaling.decide(policy, state, autoscaling.Sample(now, ongoing, latency))
        if decided.replicas != state.replicas:
            why = f"{ongoing:.2f} requests in flight on average"
            if latency is not None:
                why += f", {latency:.1f} ms mean latency"
            self._event(
                d.name, "scale", "", f"{state.replicas} -> {decided.replicas} replicas ({why})"
            )
            log.info("autoscaling %s: %d -> %d (%s)", d.name, state.replicas, decided.replicas, why)
        self._scale[d.name] = decided
        return decided.replicas

    def _note_pending(self, pending: dict[str, list[str]]) -> None:
        for name, reasons in pending.items():
            if self._pending.get(name) != reasons:
                log.warning("%d replica(s) of %s pending: %s", len(reasons), name, reasons[0])
                self._event(name, "pending", "", reasons[0])
        self._pending = dict(pending)

    def _forget(self, by_name: dict[str, DeploymentRecord]) -> None:
        for table in (self._scale, self._load_seen, self._failures):
            for name in [n for n in table if n not in by_name]:
                del table[name]

    def _start_budget(self, desired: list[Desired]) -> dict[str, int]:
        now = self._clock()
        budget = {}
        for d in desired:
            history = self._failures[d.name]
            while history and now - history[0] > 60.0:
                history.popleft()
            budget[d.name] = max(0, self._max_starts - len(history))
        return budget

    async def _start(self, record: DeploymentRecord, action: Start) -> None:
        if action.revision:  # the last revision that served (while the new one cannot), or
            record = record.at(action.revision)  # the candidate beside it
        version, d = record.version, record.deployment
        try:  # a bucket-backed store fetches its local copy here: off the loop
            artifact = await asyncio.to_thread(self._blob_path, version.artifact.digest)
        except Exception as exc:  # the store is away: this start waits, the loop goes on
            self._last_failure[d.name] = f"could not fetch the artifact: {redact_paths(str(exc))}"
            log.warning("cannot start a replica of %s yet: %s", d.name, exc)
            return
        spec = ReplicaSpec(
            replica_id=uuid.uuid4().hex[:10],
            deployment=d.name,
            model=version.model,
            version=version.version,
            artifact=artifact,
            digest=version.artifact.digest,
            revision=d.revision,
            config=d.config,
            node=action.node,
            resources=d.resources,
            input_stats=version.input_stats,
        )
        self._placements[spec.replica_id] = action.reason
        self._event(spec.deployment, "start", spec.replica_id, f"{version.ref} on {action.reason}")
        log.info("starting replica %s of %s (%s) on %s", spec.replica_id, spec.deployment,
                 version.ref, action.reason)  # fmt: skip
        try:
            await self._executor.start(spec)
        except Exception as exc:  # an executor error fails this replica, not the loop
            self._last_failure[spec.deployment] = f"could not start: {redact_paths(str(exc))}"
            log.exception("could not start replica %s", spec.replica_id)

    def _publish(
        self, records: list[DeploymentRecord], observed: list[Replica], planned_at: float
    ) -> list[Route]:
        routes = []
        for record in records:
            d = record.deployment
            ready = [
                r for r in observed if r.deployment == d.name and r.state == ReplicaState.READY
            ]
            serving = [r for r in ready if r.revision == d.revision]
            version, signature = d.version, record.version.signature
            if not serving and record.stable is not None:
                # a rollout: the last revision that served serves until the new one is ready
                stable = record.stable
                version, signature = stable.deployment.version, stable.version.signature
                serving = [r for r in ready if r.revision == stable.deployment.revision]
            elif not serving:
                serving = [r for r in ready if r.version == version]
            endpoints = tuple(Endpoint(r.id, r.url) for r in serving)
            canary = None
            if record.candidate is not None and record.split is not None:
                c, split = record.candidate, record.split
                canary = Canary(
                    version=str(c.deployment.version), signature=c.version.signature,
                    endpoints=tuple(Endpoint(r.id, r.url) for r in ready
                                    if r.revision == c.deployment.revision),
                    percent=0.0 if split.mode == SplitMode.SHADOW else split.percent,
                    shadow=split.mode == SplitMode.SHADOW,
                    compare=split.mode == SplitMode.ROLLOUT,
                )  # fmt: skip
            if endpoints or self._clock() > self._inherited_until:
                self._inherited.pop(d.name, None)
            else:
                endpoints = self._inherited.get(d.name, ())
            scaling, state = d.autoscaling, self._scale.get(d.name)
            target = None if state is None else state.replicas
            routes.append(
                Route(
                    name=d.name,
                    model=d.model,
                    version=str(version),
                    signature=signature,
                    desired=d.replicas if target is None else target,
                    endpoints=endpoints,
                    max_queued=d.config.max_queued_requests,
                    cold_start_s=scaling.cold_start_timeout_s if scaling else 0.0,
                    pending=self._pending.get(d.name, [""])[0],
                    planned_at=planned_at,
                    canary=canary,
                )
            )
        self._table.publish(routes)
        return routes

    async def _share_state(self, routes: list[Route], view: ControlView) -> None:
        """Hand the routes and the view to the other servers when they changed (``planned_at``
        aside, which is this process's clock)."""
        if self._share is None:
            return
        comparable = ([replace(r, planned_at=0.0) for r in routes], view)
        if comparable == self._shared:
            return
        try:
            await asyncio.to_thread(self._share, routes, view)
        except Exception:
            log.exception("could not share the routes; trying again next step")
            return
        self._shared = comparable

    async def release_all(self) -> None:
        """Let go of every replica (this server's lease is lost): the executor stops the ones
        that live with this process, for the new leader to start its own, and leaves the ones
        that outlive it (Ray's) for the new leader to adopt. None is left that nobody manages."""
        for replica in list(self._observed):
            self._let_go(replica.id, "release", "this server no longer leads", replica.deployment)
        await self._executor.release()
        self._observed, self._shared = [], None

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                if self._may_act():
                    await self.step()
            except Exception:
                log.exception("reconcile step failed; retrying")
            elapsed = time.perf_counter() - started
            if self._on_step is not None:
                self._on_step(elapsed)
            if elapsed > 5:
                log.warning("reconcile step took %.1fs", elapsed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="controller")

    async def pause(self) -> None:
        """Stop reconciling (the replicas stay as they are)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def stop(self) -> None:
        await self.pause()
        await self._executor.shutdown()
