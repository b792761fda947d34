"""Deployments (desired state) and replicas (what runs), with the replica state machine."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class ReplicaState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    FAILED = "failed"


# Which transitions a replica may make; anything else is a bug in the caller.
TRANSITIONS: dict[ReplicaState, frozenset[ReplicaState]] = {
    ReplicaState.STARTING: frozenset(
        {ReplicaState.READY, ReplicaState.FAILED, ReplicaState.STOPPING}
    ),
    ReplicaState.READY: frozenset(
        {ReplicaState.UNHEALTHY, ReplicaState.FAILED, ReplicaState.STOPPING}
    ),
    ReplicaState.UNHEALTHY: frozenset(
        {ReplicaState.READY, ReplicaState.FAILED, ReplicaState.STOPPING}
    ),
    ReplicaState.STOPPING: frozenset({ReplicaState.FAILED}),
    ReplicaState.FAILED: frozenset(),
}


def can_transition(old: ReplicaState, new: ReplicaState) -> bool:
    return old == new or new in TRANSITIONS[old]


@dataclass(frozen=True, slots=True)
class Deployment:
    """What the user asked for: ``replicas`` copies of one model version serving as ``name``."""

    name: str
    model: str
    version: int
    replicas: int
    created_at: datetime
    updated_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


@dataclass(frozen=True, slots=True)
class Replica:
    """A running copy of a deployment, as an executor reports it."""

    id: str
    deployment: str
    model: str
    version: int
    url: str
    state: ReplicaState
    started_at: float
    pid: int | None = None
    message: str = ""
