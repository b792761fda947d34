"""The routing snapshot the control plane hands the gateway, and replica choice."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelplane.domain import Signature


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How to reach one ready replica: ``unix:/path/to.sock`` or ``http://host:port``."""

    replica_id: str
    url: str


@dataclass(frozen=True, slots=True)
class Route:
    """One public model name and the ready replicas behind it."""

    name: str
    model: str
    version: str
    signature: Signature
    desired: int
    endpoints: tuple[Endpoint, ...] = ()
    max_queued: int = 256
    cold_start_s: float = 0.0  # >0: with no replica, hold requests this long while one starts


@dataclass(slots=True)
class RoutingTable:
    """The latest snapshot. Replaced whole, never edited, so readers need no lock."""

    routes: dict[str, Route] = field(default_factory=dict)

    def publish(self, routes: list[Route]) -> None:
        self.routes = {r.name: r for r in routes}

    def get(self, name: str) -> Route | None:
        return self.routes.get(name)
