"""The ``ReplicaExecutor`` seam: start, stop and observe replicas."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from modelplane.domain import (
    DEFAULT_REQUEST,
    Node,
    Replica,
    ReplicaState,
    Resources,
    ServingConfig,
)
from modelplane.settings import Settings


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """What one replica should run."""

    replica_id: str
    deployment: str
    model: str
    version: int
    artifact: Path
    digest: str
    revision: str = ""
    config: ServingConfig = field(default_factory=ServingConfig)
    node: str = ""
    resources: Resources = DEFAULT_REQUEST
    input_stats: dict[str, Any] | None = None  # the version's, for config.input_guard


class ReplicaExecutor(Protocol):
    @property
    def token(self) -> str:
        """The secret the gateway presents to this executor's replicas."""
        ...

    @property
    def replica_tls(self) -> ssl.SSLContext | None:
        """What the gateway connects to ``tls://`` replicas with (replicas on other machines);
        None where replicas listen only on this machine."""
        ...

    @property
    def outlives_server(self) -> bool:
        """Whether replicas go on running when this server stops (Ray's detached actors),
        for the next leader to adopt; otherwise they are this process's own and stop with it."""
        ...

    async def start(self, spec: ReplicaSpec) -> Replica: ...

    async def stop(self, replica_id: str) -> None: ...

    async def observe(self) -> list[Replica]:
        """Every replica this executor holds, with its state checked now (process + health)."""
        ...

    async def nodes(self) -> list[Node]:
        """The nodes replicas can be placed on, with their capacity and health now."""
        ...

    async def release(self) -> None:
        """This server no longer leads: let go of every replica. Replicas that live and die
        with this process are stopped; ones that outlive it (Ray's detached actors) are left
        running, for the new leader to adopt, and adopted again if this server leads again."""
        ...

    async def shutdown(self) -> None: ...


def after_probe(
    replica: Replica, healthy: bool, failures: int, settings: Settings
) -> tuple[Replica, int]:
    """What a health probe of a running replica makes of it, with its run of failed probes:
    ready when it answers; starting until the start timeout, then failed; unhealthy after the
    failure threshold. The same rule for every executor."""
    if healthy:
        return replace(replica, state=ReplicaState.READY, message=""), 0
    if replica.state == ReplicaState.STARTING:
        waited = time.time() - replica.started_at
        if waited > settings.serving.replica_start_timeout_s:
            message = f"not ready after {waited:.0f}s; killed"
            return replace(replica, state=ReplicaState.FAILED, message=message), failures
        return replica, failures
    failures += 1
    if failures >= settings.scheduler.health_failure_threshold:
        return replace(
            replica, state=ReplicaState.UNHEALTHY, message="health checks failing"
        ), failures
    return replica, failures
