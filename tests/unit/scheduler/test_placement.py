"""Placement over small, explicit clusters: filters, cost, spread, packing, reasons."""

from collections import Counter
from collections.abc import Sequence

from modelplane.domain import Node, NodeState, PlacementPolicy, Resources
from modelplane.scheduler.placement import ClusterView, Placed, Request, Unplaced, place, place_all


def node(nid: str, cpu: float, mem: int, cost: float, zone: str = "a", **labels: str) -> Node:
    return Node(nid, Resources(cpu, mem), {"zone": zone, **labels}, cost_per_hour=cost)


def nodes_of(decisions: Sequence[object]) -> list[str]:
    return [d.node for d in decisions if isinstance(d, Placed)]


def test_cheapest_node_for_the_share_wins() -> None:
    view = ClusterView([node("dear", 8, 16384, 2.0), node("cheap", 8, 16384, 1.0)])
    decision = place(view, Request("m", Resources(1, 512)))
    assert isinstance(decision, Placed)
    assert decision.node == "cheap"
    assert "cheapest share" in decision.reason


def test_never_over_commits_and_reports_the_largest_free() -> None:
    view = ClusterView([node("n1", 2, 4096, 1.0), node("n2", 3, 4096, 1.0)])
    decisions = place_all(view, [Request("m", Resources(2, 512))] * 3)
    assert sorted(nodes_of(decisions)) == ["n1", "n2"]
    last = decisions[2]
    assert isinstance(last, Unplaced)
    assert last.reason == "needs 2 CPU per replica; the largest free is 1 CPU on n2"
    assert view.free_cpu.tolist() == [2, 3]  # the input view is untouched


def test_memory_shortage_is_named() -> None:
    view = ClusterView([node("n1", 8, 1024, 1.0)])
    decision = place(view, Request("m", Resources(1, 2048)))
    assert isinstance(decision, Unplaced)
    assert "needs 2048 MB of memory per replica; the largest free is 1024 MB" in decision.reason


def test_labels_and_health_filter() -> None:
    nodes = [
        node("eu", 8, 8192, 1.0, zone="eu"),
        node("us", 8, 8192, 0.5, zone="us"),
        Node("down", Resources(8, 8192), {"zone": "eu"}, 0.1, NodeState.LOST),
    ]
    view = ClusterView(nodes)
    policy = PlacementPolicy(node_labels={"zone": "eu"})
    decision = place(view, Request("m", Resources(1, 512), policy))
    assert isinstance(decision, Placed)
    assert decision.node == "eu"
    missing = place(view, Request("m", Resources(1, 512), PlacementPolicy({"zone": "ap"})))
    assert isinstance(missing, Unplaced)
    assert "no healthy node has the labels zone=ap" in missing.reason


def test_gpu_type_must_match() -> None:
    nodes = [
        Node("t4", Resources(8, 8192, 1), {}, 1.0, gpu_type="t4"),
        Node("a100", Resources(8, 8192, 1), {}, 4.0, gpu_type="a100"),
    ]
    policy = PlacementPolicy(gpu_type="a100")
    decision = place(ClusterView(nodes), Request("m", Resources(1, 512, 1), policy))
    assert isinstance(decision, Placed)
    assert decision.node == "a100"


def test_replicas_of_one_deployment_spread_over_nodes_and_zones() -> None:
    nodes = [node(f"{z}{i}", 16, 32768, 1.0, zone=z) for z in "abc" for i in range(2)]
    decisions = place_all(ClusterView(nodes), [Request("m", Resources(1, 512))] * 6)
    placed = nodes_of(decisions)
    assert len(set(placed)) == 6
    assert Counter(p[0] for p in placed) == {"a": 2, "b": 2, "c": 2}


def test_other_deployments_pack_onto_used_nodes() -> None:
    nodes = [node(f"n{i}", 8, 16384, 1.0) for i in range(4)]
    requests = [Request(f"d{i}", Resources(1, 1024)) for i in range(8)]
    placed = nodes_of(place_all(ClusterView(nodes), requests))
    assert len(set(placed)) == 1  # one node filled; three stay free


def test_spread_beats_packing_for_the_same_deployment() -> None:
    view = ClusterView.build([node("n1", 8, 16384, 1.0), node("n2", 8, 16384, 1.0)],
                             [("n1", "m", Resources(1, 512))])  # fmt: skip
    decision = place(view, Request("m", Resources(1, 512)))
    assert isinstance(decision, Placed)
    assert decision.node == "n2"
    assert "no replica of m here" in decision.reason
    packed = place(view, Request("m", Resources(1, 512), PlacementPolicy(spread_weight=0)))
    assert isinstance(packed, Placed)
    assert packed.node == "n1"


def test_no_nodes_at_all() -> None:
    decision = place(ClusterView([]), Request("m", Resources(1, 512)))
    assert isinstance(decision, Unplaced)
    assert "there are no nodes" in decision.reason


def test_zones_restrict_and_the_reason_names_them() -> None:
    nodes = [node("a1", 8, 8192, 1.0, zone="a"), node("b1", 8, 8192, 2.0, zone="b")]
    policy = PlacementPolicy(zones=("b",))
    decision = place(ClusterView(nodes), Request("m", Resources(1, 512), policy))
    assert isinstance(decision, Placed)
    assert decision.node == "b1"  # dearer, but the only one in an allowed zone
    nowhere = place(
        ClusterView(nodes), Request("m", Resources(1, 512), PlacementPolicy(zones=("c",)))
    )
    assert isinstance(nowhere, Unplaced)
    assert "no healthy node has the labels zone in c" in nowhere.reason


def test_a_gpu_nodes_held_back_room_is_what_the_reason_names() -> None:
    gpu = Node("g1", Resources(8, 16384, gpus=1), {"zone": "a"}, cost_per_hour=3.0)
    view = ClusterView([gpu])
    # without GPUs a replica may use only the spare room: half the free GPU's share stays free
    decision = place(view, Request("m", Resources(5, 512)))
    assert isinstance(decision, Unplaced)
    assert decision.reason == "needs 5 CPU per replica; the largest free is 4 CPU on g1"
    assert isinstance(place(view, Request("m", Resources(4, 512))), Placed)
    assert isinstance(place(view, Request("m", Resources(5, 512, gpus=1))), Placed)
