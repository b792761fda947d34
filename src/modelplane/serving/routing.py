"""The routing snapshot the control plane hands the gateway, and replica choice."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from modelplane.domain import Signature


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How to reach one ready replica: ``unix:/path/to.sock`` or ``http://host:port``."""

    replica_id: str
    url: str


@dataclass(frozen=True, slots=True)
class Canary:
    """A second version serving beside a route's own: it answers ``percent`` of the requests,
    or with ``shadow`` a copy of each (answer discarded). ``compare``: its answers are checked
    against the route's version on the same inputs (a copy goes to the other version)."""

    version: str
    signature: Signature
    endpoints: tuple[Endpoint, ...] = ()
    percent: float = 0.0
    shadow: bool = False
    compare: bool = False


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
    canary: Canary | None = None
    fixed: bool = False  # pinned to one of two versions: retries stay on it

    def versions(self) -> list[str]:
        return [self.version] + ([self.canary.version] if self.canary is not None else [])

    def pinned(self, version: str) -> Route | None:
        """The route restricted to one of its versions (every request to it), or None."""
        canary = self.canary
        if canary is None:
            return self if version == self.version else None
        if version == self.version:
            return replace(self, canary=None, fixed=True)
        if version == canary.version:
            return replace(self, version=canary.version, signature=canary.signature,
                           endpoints=canary.endpoints, canary=None, fixed=True)  # fmt: skip
        return None


def route_doc(route: Route) -> dict[str, Any]:
    """The route as JSON, for the gateways of other servers (``planned_at`` stays here: it is
    this process's monotonic clock)."""
    doc = asdict(route)
    doc["signature"] = route.signature.to_dict()
    doc["endpoints"] = [[e.replica_id, e.url] for e in route.endpoints]
    del doc["planned_at"]
    if route.canary is not None:
        doc["canary"]["signature"] = route.canary.signature.to_dict()
        doc["canary"]["endpoints"] = [[e.replica_id, e.url] for e in route.canary.endpoints]
    return doc


def _endpoints(pairs: list[list[str]]) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(i, u) for i, u in pairs)


def route_from_doc(doc: dict[str, Any]) -> Route:
    canary = doc.get("canary")
    if canary is not None:
        canary = Canary(**{**canary, "signature": Signature.from_dict(canary["signature"]),
                           "endpoints": _endpoints(canary["endpoints"])})  # fmt: skip
    return Route(**{**doc, "signature": Signature.from_dict(doc["signature"]),
                    "endpoints": _endpoints(doc["endpoints"]), "canary": canary})  # fmt: skip


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
