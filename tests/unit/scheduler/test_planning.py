from collections.abc import Sequence

from modelplane.domain import DEFAULT_REQUEST, Node, NodeState, Replica, ReplicaState, Resources
from modelplane.scheduler.planning import Desired, Drain, Pending, Start, Stop, plan

NODES = [
    Node("n1", Resources(4, 8192), {"zone": "a"}, cost_per_hour=1.0),
    Node("n2", Resources(4, 8192), {"zone": "b"}, cost_per_hour=1.0),
]


def replica(
    rid: str,
    state: ReplicaState,
    version: int = 1,
    name: str = "iris",
    node: str = "n1",
    resources: Resources = DEFAULT_REQUEST,
) -> Replica:
    return Replica(rid, name, "iris", version, f"unix:/{rid}", state, float(len(rid)),
                   revision=f"r{version}", node=node, resources=resources)  # fmt: skip


def kinds(actions: Sequence[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_starts_missing_replicas_on_different_nodes() -> None:
    actions = plan([Desired("iris", "r1", 2)], [], NODES)
    assert kinds(actions) == ["Start", "Start"]
    assert {a.node for a in actions if isinstance(a, Start)} == {"n1", "n2"}
    assert all(isinstance(a, Start) and a.reason.startswith(a.node) for a in actions)


def test_nothing_to_do_when_observed_matches() -> None:
    observed = [replica("a", ReplicaState.READY), replica("b", ReplicaState.STARTING, node="n2")]
    assert plan([Desired("iris", "r1", 2)], observed, NODES) == []


def test_failed_replica_is_stopped_and_replaced() -> None:
    observed = [replica("a", ReplicaState.READY), replica("b", ReplicaState.FAILED, node="n2")]
    actions = plan([Desired("iris", "r1", 2)], observed, NODES)
    assert actions[0] == Stop("b", "failed")
    assert isinstance(actions[1], Start)
    assert actions[1].node == "n2"


def test_replicas_on_a_lost_node_are_replaced_elsewhere() -> None:
    nodes = [NODES[0], Node("n2", Resources(4, 8192), {"zone": "b"}, state=NodeState.LOST)]
    observed = [replica("a", ReplicaState.READY), replica("b", ReplicaState.READY, node="n2")]
    actions = plan([Desired("iris", "r1", 2)], observed, nodes)
    assert actions[0] == Stop("b", "node n2 lost")
    assert isinstance(actions[1], Start)
    assert actions[1].node == "n1"


def test_start_budget_limits_a_crash_loop() -> None:
    assert kinds(plan([Desired("iris", "r1", 3)], [], NODES, {"iris": 1})) == ["Start"]
    assert plan([Desired("iris", "r1", 3)], [], NODES, {"iris": 0}) == []


def test_scale_down_stops_starting_replicas_and_drains_ready_ones() -> None:
    observed = [replica("a", ReplicaState.READY), replica("bb", ReplicaState.STARTING)]
    assert plan([Desired("iris", "r1", 1)], observed, NODES) == [Stop("bb", "scaled down")]
    observed = [replica("a", ReplicaState.READY), replica("bb", ReplicaState.READY)]
    assert plan([Desired("iris", "r1", 1)], observed, NODES) == [Drain("bb", "scaled down")]


def test_deleted_deployment_drains_its_replicas() -> None:
    assert plan([], [replica("a", ReplicaState.READY)], NODES) == [Drain("a", "deployment deleted")]


def test_draining_replicas_are_left_to_finish() -> None:
    observed = [replica("a", ReplicaState.DRAINING), replica("b", ReplicaState.READY)]
    assert plan([Desired("iris", "r1", 1)], observed, NODES) == []


def test_rolling_update_keeps_old_version_until_new_is_ready() -> None:
    old = replica("a", ReplicaState.READY, version=1)
    assert kinds(plan([Desired("iris", "r2", 1)], [old], NODES)) == ["Start"]
    starting = replica("b", ReplicaState.STARTING, version=2)
    assert plan([Desired("iris", "r2", 1)], [old, starting], NODES) == []
    ready = replica("b", ReplicaState.READY, version=2)
    assert plan([Desired("iris", "r2", 1)], [old, ready], NODES) == [
        Drain("a", "replaced by a new revision")
    ]


def test_a_replica_that_fits_nowhere_is_pending_with_a_reason() -> None:
    small = [Node("n1", Resources(2, 8192))]
    actions = plan([Desired("iris", "r1", 3, Resources(4, 512))], [], small)
    assert (
        actions
        == [
            Pending(
                "iris",
                "needs 4 CPU per replica; the largest free is 2 CPU on n1 "
                "(no node has more than 2 CPU)",
            )
        ]
        * 3
    )
    fitting = plan([Desired("iris", "r1", 3, Resources(0.5, 512))], [], small)
    assert kinds(fitting) == ["Start"] * 3


def test_rolling_update_without_room_gives_back_one_old_replica_at_a_time() -> None:
    small = [Node("n1", Resources(2, 8192))]
    one = Resources(1, 512)
    old = [replica("a", ReplicaState.READY, resources=one),
           replica("bb", ReplicaState.READY, resources=one)]  # fmt: skip
    want = Desired("iris", "r2", 2, Resources(1, 512))
    actions = plan([want], old, small)
    assert kinds(actions) == ["Pending", "Pending", "Drain"]
    assert actions[2] == Drain("a", "making room for the new revision")
    # a new request that could never fit gives nothing back: the old replicas keep serving
    huge = plan([Desired("iris", "r2", 2, Resources(4, 512))], old, small)
    assert kinds(huge) == ["Pending", "Pending"]
    assert huge[0] == Pending(
        "iris",
        "needs 4 CPU per replica; the largest free is 0 CPU on n1 (no node has more than 2 CPU)",
    )


def test_room_is_made_where_this_rounds_starts_leave_it() -> None:
    nodes = [Node("n1", Resources(1.5, 8192)), Node("n2", Resources(1, 8192))]
    half = Resources(0.5, 512)
    old = [
        replica("a", ReplicaState.READY, node="n1", resources=half),
        replica("bb", ReplicaState.READY, node="n2", resources=half),
    ]
    actions = plan([Desired("iris", "r2", 2, Resources(1, 512))], old, nodes)
    # the first new replica takes n1's free CPU: only giving back bb (on n2) makes room now
    assert [a.node for a in actions if isinstance(a, Start)] == ["n1"]
    assert [a for a in actions if isinstance(a, Drain)] == [
        Drain("bb", "making room for the new revision")
    ]


def test_a_draining_node_is_emptied_without_downtime() -> None:
    nodes = [Node("n1", Resources(4, 8192), state=NodeState.DRAINING), NODES[1]]
    on_n1 = replica("a", ReplicaState.READY)
    actions = plan([Desired("iris", "r1", 1)], [on_n1], nodes)
    assert len(actions) == 1
    assert isinstance(actions[0], Start)
    assert actions[0].node == "n2"  # the new one first, elsewhere; the old keeps serving
    moved = replica("b", ReplicaState.READY, node="n2")
    assert plan([Desired("iris", "r1", 1)], [on_n1, moved], nodes) == [
        Drain("a", "node n1 is draining")
    ]


def test_a_cordoned_node_keeps_its_replicas_but_takes_no_new_ones() -> None:
    nodes = [Node("n1", Resources(4, 8192), state=NodeState.CORDONED), NODES[1]]
    on_n1 = replica("a", ReplicaState.READY)
    actions = plan([Desired("iris", "r1", 2)], [on_n1], nodes)
    assert len(actions) == 1
    assert isinstance(actions[0], Start)
    assert actions[0].node == "n2"
    only = [Node("n1", Resources(4, 8192), state=NodeState.CORDONED)]
    [pending] = plan([Desired("iris", "r1", 2)], [on_n1], only)
    assert pending == Pending(
        "iris", "needs 0.25 CPU, 512 MB per replica; no node takes replicas (nodes are cordoned)"
    )


LAST_GOOD = Desired("iris", "r1", 1)


def test_the_last_good_revision_is_started_while_the_new_one_has_no_ready_replica() -> None:
    # after a restart: nothing runs, the new revision (r2) has never been ready
    actions = plan([Desired("iris", "r2", 1, fallback=LAST_GOOD)], [], NODES, {"iris": 5})
    starts = [a for a in actions if isinstance(a, Start)]
    assert [a.revision for a in starts] == ["r1", ""]
    # a crash loop has spent most of the budget: the last good revision has it first
    actions = plan([Desired("iris", "r2", 1, fallback=LAST_GOOD)], [], NODES, {"iris": 1})
    assert [a.revision for a in actions if isinstance(a, Start)] == ["r1"]


def test_the_last_good_revision_is_kept_until_the_new_one_is_ready() -> None:
    desired = [Desired("iris", "r2", 1, fallback=LAST_GOOD)]
    starting = [replica("a", ReplicaState.STARTING, version=1),
                replica("b", ReplicaState.STARTING, version=2, node="n2")]  # fmt: skip
    assert plan(desired, starting, NODES) == []  # neither is stopped, nothing more started
    failing = [replica("a", ReplicaState.READY, version=1),
               replica("b", ReplicaState.FAILED, version=2, node="n2")]  # fmt: skip
    actions = plan(desired, failing, NODES)
    assert actions[0] == Stop("b", "failed")
    assert [a.revision for a in actions if isinstance(a, Start)] == [""]
    ready = [replica("a", ReplicaState.READY, version=1),
             replica("b", ReplicaState.READY, version=2, node="n2")]  # fmt: skip
    assert plan(desired, ready, NODES) == [Drain("a", "replaced by a new revision")]


def test_the_last_good_revision_never_takes_the_room_a_rolling_update_frees() -> None:
    one = [Node("n1", Resources(2, 8192))]
    old = [replica("a", ReplicaState.READY, resources=Resources(1, 512)),
           replica("b", ReplicaState.READY, resources=Resources(1, 512))]  # fmt: skip
    fallback = Desired("iris", "r1", 3, Resources(1, 512))
    desired = [Desired("iris", "r2", 3, Resources(1, 256), fallback=fallback)]
    actions = plan(desired, old, one)
    # no start of the old revision: one of its replicas is given back for the new one
    assert not [a for a in actions if isinstance(a, Start)]
    assert Drain("a", "making room for the new revision") in actions
