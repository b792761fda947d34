"""What the gateway tells a caller about a name it cannot serve: how to bring a removed
deployment back, and, for a scaled-to-zero one that cannot be placed, why, at once."""

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from modelplane.domain import Signature
from modelplane.errors import NotFound, Unavailable
from modelplane.serving.gateway import Gateway
from modelplane.serving.routing import RETIRED_KEPT, Route, RoutingTable
from modelplane.telemetry.metrics import Metrics


def route(name: str, model: str, version: str = "1", **fields: Any) -> Route:
    return Route(name, model, version, Signature((), ()), 1, **fields)


def gateway(table: RoutingTable) -> Gateway:
    return Gateway(table, "t", 5.0, Metrics(CollectorRegistry()))


def test_a_removed_deployment_is_named_with_the_command_that_brings_it_back() -> None:
    table = RoutingTable()
    table.publish([route("lazy", "flowers", "2"), route("iris", "iris", "1")])
    table.publish([])
    with pytest.raises(NotFound) as lazy:
        gateway(table).route("lazy", None)
    assert lazy.value.message == (
        "model 'lazy' is not deployed (it was a deployment of flowers:2); deploy it again "
        "with `modelplane deploy flowers:2 --name lazy` and the flags it had"
    )
    with pytest.raises(
        NotFound, match=r"deploy it again with `modelplane deploy iris:1` and the flags it had$"
    ):
        gateway(table).route("iris", None)
    # deployed again: routed, and no longer remembered as gone
    table.publish([route("lazy", "flowers", "3")])
    assert gateway(table).route("lazy", None).version == "3"
    assert "lazy" not in table.retired


def test_a_name_never_deployed_gets_both_ways_to_deploy_it() -> None:
    with pytest.raises(NotFound) as ghost:
        gateway(RoutingTable()).route("ghost", None)
    assert "`modelplane deploy ghost`" in ghost.value.message
    assert "`modelplane deploy MODEL --name ghost`" in ghost.value.message


def test_retired_names_are_bounded() -> None:
    table = RoutingTable()
    for i in range(RETIRED_KEPT + 5):
        table.publish([route(f"m{i}", "m")])
    table.publish([])
    assert len(table.retired) == RETIRED_KEPT
    assert f"m{RETIRED_KEPT + 4}" in table.retired
    assert "m0" not in table.retired


async def test_a_cold_start_that_cannot_be_placed_fails_at_once_with_the_reason() -> None:
    table = RoutingTable()
    reason = "needs 0.25 CPU per replica; the largest free is 0 CPU on vm"
    # a plan from before this request said "no room": room may have been freed since, so the
    # gateway waits for a plan made after the request asked for a replica
    stale = route("lazy", "flowers", cold_start_s=60.0, pending=reason, planned_at=0.0)
    table.publish([stale])
    gw = gateway(table)

    def no_room() -> None:  # what the controller publishes once it has tried to place one
        fresh = route("lazy", "flowers", cold_start_s=60.0, pending=reason,
                      planned_at=time.monotonic())  # fmt: skip
        table.publish([fresh])

    def on_demand() -> None:  # the controller is kicked, and publishes a moment later
        asyncio.get_running_loop().call_later(0.2, no_room)

    gw.on_demand = on_demand
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await gw.infer(stale, b"{}", None)
    waited = time.monotonic() - started
    assert 0.2 <= waited < 2  # not on the stale plan, and not the 60 s cold-start wait
    assert f"cannot be placed: {reason}" in info.value.message
