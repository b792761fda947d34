"""The routing snapshot the control plane hands the gateway, and replica choice."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

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
    pending: str = ""  # why a wanted replica cannot be placed now (no room), if one cannot
    planned_at: float = 0.0  # time.monotonic() when the plan behind ``pending`` began


def route_doc(route: Route) -> dict[str, Any]:
    """The route as JSON, for the gateways of other servers (``planned_at`` stays here: it is
    this process's monotonic clock)."""
    doc = asdict(route)
    doc["signature"] = route.signature.to_dict()
    doc["endpoints"] = [[e.replica_id, e.url] for e in route.endpoints]
    del doc["planned_at"]
    return doc


def route_from_doc(doc: dict[str, Any]) -> Route:
    return Route(**{**doc, "signature": Signature.from_dict(doc["signature"]),
                    "endpoints": tuple(Endpoint(i, u) for i, u in doc["endpoints"])})  # fmt: skip


RETIRED_KEPT = 1000


@dataclass(slots=True)
class RoutingTable:
    """The latest snapshot. Replaced whole, never edited, so readers need no lock. Names that
    were routed and are gone are remembered (``retired``: name -> model:version, the most
    recent few) so a request for one can say how to bring it back."""

    routes: dict[str, Route] = field(default_factory=dict)
    retired: dict[str, str] = field(default_factory=dict)

    def publish(self, routes: list[Route]) -> None:
        fresh = {r.name: r for r in routes}
        retired = {n: v for n, v in self.retired.items() if n not in fresh}
        for name, route in self.routes.items():
            if name not in fresh:
                retired.pop(name, None)
                retired[name] = f"{route.model}:{route.version}"
        while len(retired) > RETIRED_KEPT:
            del retired[next(iter(retired))]
        self.routes, self.retired = fresh, retired

    def get(self, name: str) -> Route | None:
        return self.routes.get(name)
