"""Rollouts carried out: each reconcile step judges every deployment's rollout on what the
gateway measured of its two versions (the pure policy in ``rollout``) and records the move:
the next step's share, a promotion or a rollback, in the store, the events, the log and the
audit trail."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from modelplane.domain import Replica, ReplicaState, SplitMode
from modelplane.domain.traffic import Agreement, Window
from modelplane.errors import ModelplaneError
from modelplane.registry.deployments import DeploymentRecord, DeploymentStore
from modelplane.scheduler import rollout

log = logging.getLogger("modelplane.controller")


class TrafficWatch(Protocol):
    """What the gateway measured of each version since a moment (wall-clock seconds)."""

    def window(self, deployment: str, version: str, since: float) -> Window: ...

    def agreement(self, deployment: str, since: float) -> Agreement: ...


class NoWatch:
    def window(self, deployment: str, version: str, since: float) -> Window:
        return Window()

    def agreement(self, deployment: str, since: float) -> Agreement:
        return Agreement()


Audit = Callable[[str, str, str], None]  # (action, deployment, detail) into the audit trail
Event = Callable[[str, str, str, str], None]  # (deployment, action, replica, reason)


class Rollouts:
    def __init__(
        self,
        deployments: DeploymentStore,
        watch: TrafficWatch | None = None,
        audit: Audit | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._deployments = deployments
        self._watch: TrafficWatch = watch or NoWatch()
        self._audit = audit
        self._clock = clock
        self.status: dict[str, str] = {}  # deployment -> where its rollout stands

    async def step(
        self, records: Sequence[DeploymentRecord], observed: Sequence[Replica], event: Event
    ) -> bool:
        """Judge every rollout; whether any of them moved (the records are then stale)."""
        ready = {(r.deployment, r.revision) for r in observed if r.state == ReplicaState.READY}
        moved, live = False, set()
        for record in records:
            d, split, candidate = record.deployment, record.split, record.candidate
            if split is None or candidate is None or d.rollout is None:
                continue
            if split.mode != SplitMode.ROLLOUT:
                continue
            live.add(d.name)
            c = candidate.deployment
            verdict = rollout.judge(
                d.rollout, split, self._clock(),
                ready=(d.name, c.revision) in ready,
                candidate=self._watch.window(d.name, str(c.version), split.since),
                current=self._watch.window(d.name, str(d.version), split.since),
                agreement=self._watch.agreement(d.name, split.since),
            )  # fmt: skip
            moved |= await self._carry_out(record, verdict, event)
        self.status = {k: v for k, v in self.status.items() if k in live}
        return moved

    async def _carry_out(
        self, record: DeploymentRecord, verdict: rollout.Verdict, event: Event
    ) -> bool:
        d, candidate = record.deployment, record.candidate
        assert candidate is not None
        version, new = candidate.deployment.version, candidate.version.ref
        store = self._deployments
        if isinstance(verdict, rollout.Hold):
            self.status[d.name] = f"{new}: {verdict.reason}"
            return False
        try:
            if isinstance(verdict, rollout.Begin):
                await asyncio.to_thread(store.set_split, d.name, version, verdict.split)
                reason = f"{new} is ready: step 1 at {verdict.split.percent:g}% of requests began"
                self.status[d.name] = reason
                self._decided(event, d.name, "rollout", reason)
            elif isinstance(verdict, rollout.Advance):
                await asyncio.to_thread(store.set_split, d.name, version, verdict.split)
                self.status[d.name] = f"{new}: {verdict.reason}"
                self._decided(event, d.name, "rollout", f"{new}: {verdict.reason}")
            elif isinstance(verdict, rollout.Promote):
                reason = f"rollout of {new} complete: {verdict.reason}"
                await asyncio.to_thread(store.promote, d.name, reason, version)
                self._decided(event, d.name, "promote", reason)
            else:
                reason = f"rollout of {new} rolled back: {verdict.reason}"
                await asyncio.to_thread(store.rollback, d.name, reason, version)
                self._decided(event, d.name, "rollback", reason)
                log.warning("%s: %s", d.name, reason)
        except ModelplaneError as exc:  # a person promoted or rolled back meanwhile
            log.info("rollout of %s not moved: %s", d.name, exc)
            return False
        return True

    def _decided(self, event: Event, deployment: str, action: str, reason: str) -> None:
        event(deployment, action, "", reason)
        log.info("%s %s: %s", action, deployment, reason)
        if self._audit is not None:
            self._audit(f"deployment.{action}", deployment, reason)
