"""Pure reconcile policy: from desired and observed state to actions. No I/O, no clock reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

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
    # the last revision that served: kept (and started again) while this one has no ready replica
    fallback: Desired | None = None
    # a second version serving beside this one (a canary, shadow or rollout), its own count
    candidate: Desired | None = None


@dataclass(frozen=True, slots=True)
class Start:
    deployment: str
    node: str = ""
    reason: str = ""
    revision: str = ""  # the fallback's or the candidate's revision; empty: the desired one


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
    revisions: list[str] = []  # what each request starts: "" for the desired revision
    for d in desired:
        budget = None if start_budget is None else start_budget.get(d.name, 0)
        for want, revision in _wanted(d, running):
            live = [r for r in running if r.deployment == d.name and r.state in LIVE
                    and r.revision == want.revision and r.node not in moving]  # fmt: skip
            missing = want.replicas - len(live)
            if budget is not None:
                missing = min(missing, budget)
                budget -= max(missing, 0)
            for _ in range(missing):
                requests.append(Request(d.name, want.resources, want.policy))
                revisions.append(revision)
    short_of_room: set[str] = set()
    after = view.copy()  # the cluster once this round's starts are placed
    decisions = place_into(after, requests)
    for request, revision, decision in zip(requests, revisions, decisions, strict=True):
        if isinstance(decision, Placed):
            actions.append(Start(request.deployment, decision.node, decision.reason, revision))
        else:
            short_of_room.add(request.deployment)
            actions.append(Pending(request.deployment, decision.reason))
    for d in desired:
        mine = [r for r in running if r.deployment == d.name and r.state in LIVE]
        current = [r for r in mine if r.revision == d.revision and r.node not in moving]
        beside = d.candidate.revision if d.candidate is not None else None
        old = [r for r in mine if r.revision not in (d.revision, beside) or r.node in moving]
        actions.extend(_scaled_down(current, d.replicas))
        if d.candidate is not None:
            candidates = [r for r in mine if r.revision == beside and r.node not in moving]
            actions.extend(_scaled_down(candidates, d.candidate.replicas))
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
            kept = d.fallback.revision if d.fallback is not None else None
            actions.extend(
                Stop(r.id, _why_replaced(r, d, moving))
                for r in old
                if r.state != S.READY and r.revision != kept
            )
    return actions


def _scaled_down(live: list[Replica], wanted: int) -> list[Drain | Stop]:
    """Retire replicas beyond ``wanted``: the least useful first (starting before ready, then
    the newest)."""
    extras = sorted(live, key=lambda r: (r.state == S.READY, -r.started_at))
    return [_retire(r, "scaled down") for r in extras[: max(0, len(live) - wanted)]]


def _wanted(d: Desired, running: Sequence[Replica]) -> list[tuple[Desired, str]]:
    """The revisions to have replicas of: the desired one, and at least one replica of its
    fallback while no replica of the desired one is ready (a crash-looping new version leaves
    the last good one serving, after a restart too). The fallback comes first: it has the start
    budget first. One replica, not its old count: more would take the room a rolling update
    frees for the new revision. Each with the ``Start.revision`` that starts it."""
    wanted = [(d, "")]
    fallback = d.fallback
    if fallback is not None and fallback.revision != d.revision:
        ready = any(r.deployment == d.name and r.revision == d.revision and r.state == S.READY
                    for r in running)  # fmt: skip
        if not ready:
            wanted.insert(0, (replace(fallback, replicas=1), fallback.revision))
    if d.candidate is not None and d.candidate.revision != d.revision:
        wanted.append((d.candidate, d.candidate.revision))
    return wanted


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
