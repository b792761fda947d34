"""Pure reconcile policy: from desired and observed state to actions. No I/O, no clock reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelplane.domain import Replica, ReplicaState


@dataclass(frozen=True, slots=True)
class Desired:
    name: str
    revision: str
    replicas: int


@dataclass(frozen=True, slots=True)
class Start:
    deployment: str


@dataclass(frozen=True, slots=True)
class Stop:
    replica_id: str
    reason: str


Action = Start | Stop

LIVE = (ReplicaState.STARTING, ReplicaState.READY, ReplicaState.UNHEALTHY)


def plan(
    desired: Sequence[Desired],
    observed: Sequence[Replica],
    start_budget: dict[str, int] | None = None,
) -> list[Action]:
    """Actions that move ``observed`` toward ``desired``.

    Replicas of a deployment's old revision (version or serving config) keep serving until
    enough of the new one are ready (a rolling update). Failed and unhealthy replicas are
    stopped and replaced.
    ``start_budget`` caps starts per deployment (crash-loop back-off); absent means no cap.
    """
    actions: list[Action] = []
    wanted = {d.name: d for d in desired}
    for replica in observed:
        if replica.deployment not in wanted:
            actions.append(Stop(replica.id, "deployment deleted"))
        elif replica.state == ReplicaState.FAILED:
            actions.append(Stop(replica.id, replica.message or "failed"))
        elif replica.state == ReplicaState.UNHEALTHY:
            actions.append(Stop(replica.id, "unhealthy"))
    for d in desired:
        mine = [r for r in observed if r.deployment == d.name and r.state in LIVE]
        healthy = [r for r in mine if r.state != ReplicaState.UNHEALTHY]
        current = [r for r in healthy if r.revision == d.revision]
        old = [r for r in healthy if r.revision != d.revision]
        missing = d.replicas - len(current)
        if missing > 0:
            budget = missing if start_budget is None else min(missing, start_budget.get(d.name, 0))
            actions.extend(Start(d.name) for _ in range(max(budget, 0)))
        elif missing < 0:
            # drop the least useful first: starting before ready, then the newest
            extras = sorted(current, key=lambda r: (r.state == ReplicaState.READY, -r.started_at))
            actions.extend(Stop(r.id, "scaled down") for r in extras[:-missing])
        ready = sum(1 for r in current if r.state == ReplicaState.READY)
        if old and ready >= d.replicas:
            actions.extend(Stop(r.id, "replaced by a new revision") for r in old)
    return actions
