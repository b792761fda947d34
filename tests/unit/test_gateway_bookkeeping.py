"""The gateway's per-replica and per-route bookkeeping: what the autoscaler reads from it, and
that it follows churn instead of growing."""

from prometheus_client import CollectorRegistry, generate_latest

from modelplane.domain import Signature
from modelplane.serving.gateway import Gateway
from modelplane.serving.routing import Endpoint, Route, RoutingTable
from modelplane.telemetry.metrics import Metrics


def route(name: str, *replicas: str, version: str = "1") -> Route:
    return Route(name, name, version, Signature((), ()), len(replicas),
                 tuple(Endpoint(r, f"unix:/{r}") for r in replicas))  # fmt: skip


def test_load_sums_the_versions_of_a_route() -> None:
    table = RoutingTable()
    table.publish([route("a", "r1")])
    metrics = Metrics(CollectorRegistry())
    gateway = Gateway(table, "t", 5.0, metrics)
    for version, seconds in (("1", 0.25), ("1", 0.5), ("2", 1.0)):
        metrics.requests("a", version).latency.observe(seconds)
    gateway._queued["a"] = 3
    assert gateway.load("a") == (3, 1.75, 3)
    assert gateway.load("b") == (0, 0.0, 0)
    assert gateway.in_flight() == {"a": 3}


def test_prune_forgets_gone_replicas_and_routes_but_keeps_busy_ones() -> None:
    table = RoutingTable()
    table.publish([route("a", "r1", "r2"), route("b", "r3")])
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    gateway = Gateway(table, "t", 5.0, metrics)
    for rid in ("r1", "r2", "r3"):
        gateway.traffic[rid][0] += 10
    gateway._outstanding["r2"] = 1  # draining, still answering a request
    metrics.requests("b", "1").count(200)
    metrics.requests("b", "1").latency.observe(1.0)
    assert b'model="b"' in generate_latest(registry)
    table.publish([route("a", "r1")])  # r2 draining, r3 and route b gone
    gateway.prune({"r1": "unix:/r1", "r2": "unix:/r2"})
    assert set(gateway.traffic) == {"r1", "r2"}
    assert gateway.outstanding("r2") == 1
    assert gateway.load("b") == (0, 0.0, 0)
    assert b'model="b"' not in generate_latest(registry)  # a gone route leaves /metrics
    gateway._outstanding["r2"] = 0
    gateway.prune({"r1": "unix:/r1"})
    assert set(gateway.traffic) == {"r1"}
    assert "r2" not in gateway._outstanding
