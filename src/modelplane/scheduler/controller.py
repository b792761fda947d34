"""The level-triggered reconcile loop: read desired state, observe replicas, act, publish routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelplane.cluster.executor import ReplicaExecutor, ReplicaSpec
from modelplane.domain import Replica, ReplicaState
from modelplane.registry.deployments import DeploymentRecord, DeploymentStore
from modelplane.scheduler.planning import Desired, Start, Stop, plan
from modelplane.serving.routing import Endpoint, Route, RoutingTable
from modelplane.telemetry.logs import now_iso

log = logging.getLogger("modelplane.controller")


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
        clock: Callable[[], float] = time.monotonic,
        on_step: Callable[[float], None] | None = None,
    ) -> None:
        self._on_step = on_step
        self._deployments = deployments
        self._executor = executor
        self._table = table
        self._blob_path = blob_path
        self._interval = interval_s
        self._max_starts = max_starts_per_minute
        self._clock = clock
        self._starts: defaultdict[str, deque[float]] = defaultdict(deque)
        self._wake = asyncio.Event()
        self._observed: list[Replica] = []
        self._last_failure: dict[str, str] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=500)
        self._task: asyncio.Task[None] | None = None

    # ---- what the API reads -----------------------------------------------------------------
    def replicas(self, deployment: str) -> list[Replica]:
        return [r for r in self._observed if r.deployment == deployment]

    def all_replicas(self) -> list[Replica]:
        return list(self._observed)

    def events(self, deployment: str, limit: int = 20) -> list[dict[str, Any]]:
        """The latest replica starts and stops of a deployment, with their reasons."""
        mine = [e for e in self._events if e["deployment"] == deployment]
        return mine[-limit:]

    def _event(self, deployment: str, action: str, replica: str, reason: str) -> None:
        self._events.append({"time": now_iso(), "deployment": deployment, "action": action,
                             "replica": replica, "reason": reason})  # fmt: skip

    def last_failure(self, deployment: str) -> str | None:
        return self._last_failure.get(deployment)

    def kick(self) -> None:
        """Reconcile now instead of at the next tick (after a deploy, say)."""
        self._wake.set()

    # ---- the loop ---------------------------------------------------------------------------
    async def step(self) -> None:
        records = await asyncio.to_thread(self._deployments.list)
        by_name = {r.deployment.name: r for r in records}
        desired = [
            Desired(r.deployment.name, r.deployment.revision, r.deployment.replicas)
            for r in records
        ]
        observed = await self._executor.observe()
        for replica in observed:
            if replica.state == ReplicaState.FAILED and replica.message:
                self._last_failure[replica.deployment] = replica.message
        actions = plan(desired, observed, self._start_budget(desired))
        for action in actions:
            if isinstance(action, Stop):
                log.info("stopping replica %s: %s", action.replica_id, action.reason)
                owner = next((r.deployment for r in observed if r.id == action.replica_id), "")
                self._event(owner, "stop", action.replica_id, action.reason)
                await self._executor.stop(action.replica_id)
            elif isinstance(action, Start):
                await self._start(by_name[action.deployment])
        if actions:
            observed = await self._executor.observe()
        self._observed = observed
        self._publish(records, observed)

    def _start_budget(self, desired: list[Desired]) -> dict[str, int]:
        now = self._clock()
        budget = {}
        for d in desired:
            history = self._starts[d.name]
            while history and now - history[0] > 60.0:
                history.popleft()
            budget[d.name] = max(0, self._max_starts - len(history))
        return budget

    async def _start(self, record: DeploymentRecord) -> None:
        version = record.version
        spec = ReplicaSpec(
            replica_id=uuid.uuid4().hex[:10],
            deployment=record.deployment.name,
            model=version.model,
            version=version.version,
            artifact=self._blob_path(version.artifact.digest),
            digest=version.artifact.digest,
            revision=record.deployment.revision,
            config=record.deployment.config,
        )
        self._starts[spec.deployment].append(self._clock())
        reason = "replacing or adding a replica" if self.replicas(spec.deployment) else "deployed"
        self._event(spec.deployment, "start", spec.replica_id, f"{reason} ({version.ref})")
        log.info("starting replica %s of %s (%s)", spec.replica_id, spec.deployment, version.ref)
        await self._executor.start(spec)

    def _publish(self, records: list[DeploymentRecord], observed: list[Replica]) -> None:
        routes = []
        for record in records:
            d = record.deployment
            ready = [
                r for r in observed if r.deployment == d.name and r.state == ReplicaState.READY
            ]
            serving = [r for r in ready if r.revision == d.revision]
            version, signature = d.version, record.version.signature
            previous = self._table.get(d.name)
            if not serving and previous is not None:
                # rolling update: the old revision serves until the new one is ready
                version, signature = int(previous.version), previous.signature
                serving = [r for r in ready if r.version == version]
            routes.append(
                Route(
                    name=d.name,
                    model=d.model,
                    version=str(version),
                    signature=signature,
                    desired=d.replicas,
                    endpoints=tuple(Endpoint(r.id, r.url) for r in serving),
                    max_queued=d.config.max_queued_requests,
                )
            )
        self._table.publish(routes)

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            try:
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

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._executor.shutdown()
