"""What the controller last saw and decided, as the API and the dashboard read it: replicas,
nodes, pending reasons, placements, scale targets, events and failures. The leader builds it at
the end of every reconcile step and shares it through the database; the other servers read it
from there, so every server answers ``deployments status`` and the dashboard the same way."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from modelplane.domain import Node, NodeState, Replica, ReplicaState, Resources
from modelplane.registry.nodes import Cordon


@dataclass(frozen=True, slots=True)
class ControlView:
    replicas: tuple[Replica, ...] = ()
    nodes: tuple[Node, ...] = ()
    pending: dict[str, list[str]] = field(default_factory=dict)  # deployment -> reasons
    acted_on: dict[str, datetime] = field(default_factory=dict)  # deployment -> updated_at seen
    placements: dict[str, str] = field(default_factory=dict)  # replica -> why its node
    scale: dict[str, int] = field(default_factory=dict)  # deployment -> autoscaler's target
    events: tuple[dict[str, Any], ...] = ()  # the latest, oldest first
    failures: dict[str, str] = field(default_factory=dict)  # deployment -> last failure
    cordons: dict[str, Cordon] = field(default_factory=dict)
    rollouts: dict[str, str] = field(default_factory=dict)  # deployment -> where it stands
    # acted_on: the deployment's ``updated_at`` as the last reconcile saw it, equal to the
    # stored one once the controller has acted on the latest change (like Kubernetes'
    # observedGeneration); pending: why each replica wanted but not placed is waiting

    def replicas_of(self, deployment: str) -> list[Replica]:
        return [r for r in self.replicas if r.deployment == deployment]

    def events_of(self, deployment: str, limit: int = 20) -> list[dict[str, Any]]:
        """The latest replica starts, drains, stops and scaling decisions, with their reasons."""
        return [e for e in self.events if e["deployment"] == deployment][-limit:]

    def pending_count(self) -> int:
        """Replicas wanted but not placed, over all deployments."""
        return sum(len(reasons) for reasons in self.pending.values())

    def by_node(self) -> defaultdict[str, list[Replica]]:
        found: defaultdict[str, list[Replica]] = defaultdict(list)
        for replica in self.replicas:
            found[replica.node].append(replica)
        return found

    # ---- as JSON, for the other servers ----------------------------------------------------
    def to_doc(self) -> dict[str, Any]:
        return {
            "replicas": [_replica_doc(r) for r in self.replicas],
            "nodes": [_node_doc(n) for n in self.nodes],
            "pending": self.pending,
            "acted_on": {k: v.isoformat() for k, v in self.acted_on.items()},
            "placements": self.placements,
            "scale": self.scale,
            "events": list(self.events),
            "failures": self.failures,
            "cordons": {k: asdict(c) for k, c in self.cordons.items()},
            "rollouts": self.rollouts,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ControlView:
        return cls(
            replicas=tuple(_replica(d) for d in doc["replicas"]),
            nodes=tuple(_node(d) for d in doc["nodes"]),
            pending={k: list(v) for k, v in doc["pending"].items()},
            acted_on={k: datetime.fromisoformat(v) for k, v in doc["acted_on"].items()},
            placements=dict(doc["placements"]),
            scale={k: int(v) for k, v in doc["scale"].items()},
            events=tuple(doc["events"]),
            failures=dict(doc["failures"]),
            cordons={k: Cordon(**c) for k, c in doc["cordons"].items()},
            rollouts=dict(doc.get("rollouts", {})),
        )


def _replica_doc(replica: Replica) -> dict[str, Any]:
    doc = asdict(replica)
    doc["resources"] = replica.resources.to_dict()
    return doc


def _replica(doc: dict[str, Any]) -> Replica:
    return Replica(**{**doc, "state": ReplicaState(doc["state"]),
                      "resources": Resources.from_dict(doc["resources"])})  # fmt: skip


def _node_doc(node: Node) -> dict[str, Any]:
    doc = asdict(node)
    doc["capacity"] = node.capacity.to_dict()
    doc["labels"] = dict(node.labels)
    return doc


def _node(doc: dict[str, Any]) -> Node:
    return Node(**{**doc, "state": NodeState(doc["state"]),
                   "capacity": Resources.from_dict(doc["capacity"])})  # fmt: skip
