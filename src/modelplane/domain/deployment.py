"""Deployments (desired state) and replicas (what runs), with the replica state machine."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelplane.domain.resources import DEFAULT_REQUEST, Autoscaling, PlacementPolicy, Resources
from modelplane.domain.traffic import RolloutPolicy


class ReplicaState(enum.StrEnum):
    """pending -> starting -> ready -> draining -> stopped, or failed from any live state.

    ``pending``: wanted but not placed (no node fits; the reason says why). ``unhealthy``: ready
    once, now failing health checks (replaced after the failure threshold). ``draining``: out of
    the routes, finishing the requests it holds before it stops.
    """

    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """How a deployment serves: batching and back-pressure. Validated where it enters (API)."""

    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queued_requests: int = 256
    payload_log_rate: float = 0.0  # share of requests whose bodies are logged (off by default)
    # inputs far outside the version's sample statistics: off, log, flag (header) or reject (422)
    input_guard: str = "off"
    input_guard_sigmas: float = 6.0  # how far beyond the samples' range, in their std

    def to_dict(self) -> dict[str, object]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_ms": self.max_queue_delay_ms,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
            "max_queued_requests": self.max_queued_requests,
            "payload_log_rate": self.payload_log_rate,
            "input_guard": self.input_guard,
            "input_guard_sigmas": self.input_guard_sigmas,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServingConfig:
        default = cls()
        return cls(
            max_batch_size=int(data.get("max_batch_size", default.max_batch_size)),
            max_queue_delay_ms=float(data.get("max_queue_delay_ms", default.max_queue_delay_ms)),
            preferred_batch_sizes=tuple(int(x) for x in data.get("preferred_batch_sizes", ())),
            max_queued_requests=int(data.get("max_queued_requests", default.max_queued_requests)),
            payload_log_rate=float(data.get("payload_log_rate", default.payload_log_rate)),
            input_guard=str(data.get("input_guard", default.input_guard)),
            input_guard_sigmas=float(data.get("input_guard_sigmas", default.input_guard_sigmas)),
        )


@dataclass(frozen=True, slots=True)
class Deployment:
    """What the user asked for: ``replicas`` copies of one model version serving as ``name``."""

    name: str
    model: str
    version: int
    replicas: int
    created_at: datetime
    updated_at: datetime
    config: ServingConfig = field(default_factory=ServingConfig)
    resources: Resources = DEFAULT_REQUEST
    placement: PlacementPolicy = field(default_factory=PlacementPolicy)
    autoscaling: Autoscaling | None = None
    rollout: RolloutPolicy | None = None  # how a new version takes over; None: all at once

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    @property
    def revision(self) -> str:
        """Changes whenever replicas must be replaced: a new version, serving config or
        resource request (placement knobs and autoscaling bounds apply without a restart)."""
        config = ",".join(f"{k}={v}" for k, v in sorted(self.config.to_dict().items()))
        key = f"{self.model}:{self.version}|{config}|{self.resources.to_dict()}"
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    def to_spec(self) -> dict[str, Any]:
        """How the deployment's settings are stored (one JSON document)."""
        return {
            **self.config.to_dict(),
            "resources": self.resources.to_dict(),
            "placement": self.placement.to_dict(),
            "autoscaling": None if self.autoscaling is None else self.autoscaling.to_dict(),
            "rollout": None if self.rollout is None else self.rollout.to_dict(),
        }


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
    revision: str = ""
    node: str = ""
    resources: Resources = DEFAULT_REQUEST
