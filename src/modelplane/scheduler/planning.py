"""Pure reconcile policy: from desired and observed state to actions. No I/O, no clock reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from modelplane.domain import DEFAULT_REQUEST, Node, NodeState, PlacementPolicy, Replica, Resources
from modelplane.domain import ReplicaState as S
from modelplane.scheduler.placement import ClusterView, Placed, Request, place, place_into


@dataclass(frozen=True, slots=True)
class Desired:
    name: str
    revision: str
    replicas: int
    resources: Resources = DEFAULT_REQUEST
    policy: PlacementPolicy = field(default_factory=PlacementPolicy)


@dataclass(frozen=True, slots=True)
class Start:
    deployment: str
    node: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Pending:
    """A replica that is wanted but fits nowhere now; ``reason`` says what would make it fit."""

    deployment: str
    reason: str


@dataclass(frozen=True, slots=True)
class Drain:
    """Take a serving replica out of the routes; stop it once its requests are done."""

    replica_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Stop:
    replica_id: str
    reason: str


Action = Start | Pending | Drain | Stop

LIVE = (S.STARTING, S.READY, S.UNHEALTHY)


def plan(
    desired: Sequence[Desired],
    observed: Sequence[Replica],
    nodes: Sequence[Node] = (),
    start_budget: dict[str, int] | None = None,
) -> list[Action]:
    """Actions that move ``observed`` toward ``desired`` on ``nodes``.

    Replicas of a deployment's old revision keep serving until enough of the new one are ready
    (a rolling update: start new, shift traffic, drain old). Failed and unhealthy replicas, and
    those on lost nodes, are stopped and replaced. Every start names the node placement chose.
    ``start_budget`` caps starts per deployment (crash-loop back-off); absent means no cap.
    """
    actions: list[Action] = []
    wanted = {d.name: d for d in desired}
    lost = {n.id for n in nodes if n.state == NodeState.LOST}
    # replicas on a draining node are replaced like an old revision: new ones elsewhere first
    moving = {n.id for n in nodes if n.state == NodeState.DRAINING}
    gone: set[str] = set()
    for replica in observed:
        stop = _stop_reason(replica, wanted, lost)
        if stop is not None:
            gone.add(replica.id)
            serving = replica.state == S.READY and replica.node not in lost
            actions.append(Drain(replica.id, stop) if serving else Stop(replica.id, stop))
    running = [r for r in observed if r.id not in gone]
    view = ClusterView.build(nodes, ((r.node, r.deployment, r.resources) for r in running))
    requests: list[Request] = []
    for d in desired:
        current = [r for r in running if r.deployment == d.name and r.state in LIVE
                   and r.revision == d.revision and r.node not in moving]  # fmt: skip
        missing = d.replicas - len(current)
        if missing > 0:
            budget = missing if start_budget is None else min(missing, start_budget.get(d.name, 0))
            requests.extend(Request(d.name, d.resources, d.policy) for _ in range(max(budget, 0)))
    short_of_room: set[str] = set()
    after = view.copy()  # the cluster once this round's starts are placed
    for request, decision in zip(requests, place_into(after, requests), strict=True):
        if isinstance(decision, Placed):
            actions.append(Start(request.deployment, decision.node, decision.reason))
        else:
            short_of_room.add(request.deployment)
            actions.append(Pending(request.deployment, decision.reason))
    for d in desired:
        mine = [r for r in running if r.deployment == d.name and r.state in LIVE]
        current = [r for r in mine if r.revision == d.revision and r.node not in moving]
        old = [r for r in mine if r.revision != d.revision or r.node in moving]
        if len(current) > d.replicas:
            # drop the least useful first: starting before ready, then the newest
            extras = sorted(current, key=lambda r: (r.state == S.READY, -r.started_at))
            actions.extend(_retire(r, "scaled down") for r in extras[: len(current) - d.replicas])
        ready = sum(1 for r in current if r.state == S.READY)
        old_ready = [r for r in old if r.state == S.READY]
        # giving back room helps a new revision only where it could go: not off a drained node
        outdated = [r for r in old_ready if r.revision != d.revision and r.node not in moving]
        room = (
            _making_room(after, d, outdated)
            if d.name in short_of_room and ready + len(old_ready) > 1
            else None
        )
        if old and ready >= d.replicas:
            actions.extend(_retire(r, _why_replaced(r, d, moving)) for r in old)
        elif room is not None:
            # no room to start the new revision beside the old: give back one old replica
            # at a time, keeping at least one replica serving throughout
            actions.append(Drain(room.id, "making room for the new revision"))
        else:
            actions.extend(
                Stop(r.id, _why_replaced(r, d, moving)) for r in old if r.state != S.READY
            )
    return actions


def _making_room(view: ClusterView, d: Desired, outdated: list[Replica]) -> Replica | None:
    """The oldest replica of an old revision whose room would take one of the new revision;
    none when giving any back would not help (the new request can never fit: the old keep
    serving, and the new stay pending with the reason). ``view`` is tried on and put back."""
    request = Request(d.name, d.resources, d.policy)
    for replica in sorted(outdated, key=lambda r: r.started_at):
        if replica.node not in view.index:
            continue
        view.release(replica.node, d.name, replica.resources)
        helps = isinstance(place(view, request), Placed)
        view.assign(replica.node, d.name, replica.resources)
        if helps:
            return replica
    return None


def _why_replaced(replica: Replica, d: Desired, moving: set[str]) -> str:
    if replica.revision == d.revision and replica.node in moving:
        return f"node {replica.node} is draining"
    return "replaced by a new revision"


def _stop_reason(replica: Replica, wanted: dict[str, Desired], lost: set[str]) -> str | None:
    if replica.state == S.DRAINING:
        return None  # the controller finishes it
    if replica.deployment not in wanted:
        return "deployment deleted"
    if replica.node in lost:
        return f"node {replica.node} lost"
    if replica.state == S.FAILED:
        return replica.message or "failed"
    if replica.state == S.UNHEALTHY:
        return "unhealthy"
    return None


def _retire(replica: Replica, reason: str) -> Drain | Stop:
    return Drain(replica.id, reason) if replica.state == S.READY else Stop(replica.id, reason)
