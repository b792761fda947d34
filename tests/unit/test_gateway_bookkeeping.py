"""The gateway's per-replica and per-route bookkeeping follows churn instead of growing."""

from prometheus_client import CollectorRegistry

from modelplane.domain import Signature
from modelplane.serving.gateway import Gateway
from modelplane.serving.routing import Endpoint, Route, RoutingTable
from modelplane.telemetry.metrics import Metrics


def route(name: str, *replicas: str) -> Route:
    return Route(name, name, "1", Signature((), ()), len(replicas),
                 tuple(Endpoint(r, f"unix:/{r}") for r in replicas))  # fmt: skip


def test_prune_forgets_gone_replicas_and_routes_but_keeps_busy_ones() -> None:
    table = RoutingTable()
    table.publish([route("a", "r1", "r2"), route("b", "r3")])
    gateway = Gateway(table, "t", 5.0, Metrics(CollectorRegistry()))
    for rid in ("r1", "r2", "r3"):
        gateway.traffic[rid][0] += 10
    gateway._outstanding["r2"] = 1  # draining, still answering a request
    gateway._busy["b"][0] += 1.0
    table.publish([route("a", "r1")])  # r2 draining, r3 and route b gone
    gateway.prune({"r1": "unix:/r1", "r2": "unix:/r2"})
    assert set(gateway.traffic) == {"r1", "r2"}
    assert gateway.outstanding("r2") == 1
    assert gateway.load("b") == (0, 0.0, 0)
    gateway._outstanding["r2"] = 0
    gateway.prune({"r1": "unix:/r1"})
    assert set(gateway.traffic) == {"r1"}
    assert "r2" not in gateway._outstanding
