from modelplane.domain import Replica, ReplicaState
from modelplane.scheduler.planning import Desired, Start, Stop, plan


def replica(rid: str, state: ReplicaState, version: int = 1, name: str = "iris") -> Replica:
    return Replica(
        rid, name, "iris", version, f"unix:/{rid}", state, float(len(rid)), revision=f"r{version}"
    )


def test_starts_missing_replicas() -> None:
    assert plan([Desired("iris", "r1", 2)], []) == [Start("iris"), Start("iris")]


def test_nothing_to_do_when_observed_matches() -> None:
    observed = [replica("a", ReplicaState.READY), replica("b", ReplicaState.STARTING)]
    assert plan([Desired("iris", "r1", 2)], observed) == []


def test_failed_replica_is_stopped_and_replaced() -> None:
    observed = [replica("a", ReplicaState.READY), replica("b", ReplicaState.FAILED)]
    assert plan([Desired("iris", "r1", 2)], observed) == [Stop("b", "failed"), Start("iris")]


def test_start_budget_limits_a_crash_loop() -> None:
    assert plan([Desired("iris", "r1", 3)], [], {"iris": 1}) == [Start("iris")]
    assert plan([Desired("iris", "r1", 3)], [], {"iris": 0}) == []


def test_scale_down_stops_starting_replicas_first() -> None:
    observed = [replica("a", ReplicaState.READY), replica("bb", ReplicaState.STARTING)]
    assert plan([Desired("iris", "r1", 1)], observed) == [Stop("bb", "scaled down")]


def test_deleted_deployment_stops_its_replicas() -> None:
    assert plan([], [replica("a", ReplicaState.READY)]) == [Stop("a", "deployment deleted")]


def test_rolling_update_keeps_old_version_until_new_is_ready() -> None:
    old = replica("a", ReplicaState.READY, version=1)
    assert plan([Desired("iris", "r2", 1)], [old]) == [Start("iris")]
    starting = replica("b", ReplicaState.STARTING, version=2)
    assert plan([Desired("iris", "r2", 1)], [old, starting]) == []
    ready = replica("b", ReplicaState.READY, version=2)
    assert plan([Desired("iris", "r2", 1)], [old, ready]) == [
        Stop("a", "replaced by a new revision")
    ]
