"""The ``ReplicaExecutor`` seam: start, stop and observe replicas."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from modelplane.domain import DEFAULT_REQUEST, Node, Replica, Resources, ServingConfig


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


class ReplicaExecutor(Protocol):
    @property
    def token(self) -> str:
        """The secret the gateway presents to this executor's replicas."""
        ...

    async def start(self, spec: ReplicaSpec) -> Replica: ...

    async def stop(self, replica_id: str) -> None: ...

    async def observe(self) -> list[Replica]:
        """Every replica this executor holds, with its state checked now (process + health)."""
        ...

    async def nodes(self) -> list[Node]:
        """The nodes replicas can be placed on, with their capacity and health now."""
        ...

    async def shutdown(self) -> None: ...
