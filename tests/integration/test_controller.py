"""The reconcile loop against real stores and a fake executor (the one seam with side effects)."""

from __future__ import annotations

from dataclasses import replace

from modelplane.cluster.executor import ReplicaSpec
from modelplane.domain import ModelRef, Node, Replica, ReplicaState, Resources
from modelplane.registry.service import PushRequest
from modelplane.scheduler.controller import Controller
from modelplane.serving.routing import RoutingTable


class FakeExecutor:
    token = "t"
    replica_tls = None

    def __init__(self, cpus: float = 4, nodes: int = 1) -> None:
        self.replicas: dict[str, Replica] = {}
        self.started: list[ReplicaSpec] = []
        self.stopped: list[str] = []
        self.all_nodes = [Node(f"n{i + 1}", Resources(cpus, 8192)) for i in range(nodes)]

    async def nodes(self) -> list[Node]:
        return list(self.all_nodes)

    async def start(self, spec: ReplicaSpec) -> Replica:
        self.started.append(spec)
        replica = Replica(spec.replica_id, spec.deployment, spec.model, spec.version,
                          f"unix:/{spec.replica_id}", ReplicaState.STARTING, 0.0,
                          revision=spec.revision, node=spec.node,
                          resources=spec.resources)  # fmt: skip
        self.replicas[spec.replica_id] = replica
        return replica

    async def stop(self, replica_id: str) -> None:
        self.stopped.append(replica_id)
        self.replicas.pop(replica_id, None)

    async def observe(self) -> list[Replica]:
        return list(self.replicas.values())

    outlives_server = False

    async def release(self) -> None:  # as the local executor: its replicas stop
        for replica_id in list(self.replicas):
            await self.stop(replica_id)

    async def shutdown(self) -> None:
        self.replicas.clear()

    def set_all(self, state: ReplicaState) -> None:
        for rid, r in self.replicas.items():
            self.replicas[rid] = replace(r, state=state, message=f"{state}")


async def body(data: bytes):
    yield data


async def test_controller_starts_routes_and_replaces(platform, iris_bytes) -> None:
    services = platform.services
    await services.registry.push(PushRequest("iris"), body(iris_bytes))
    services.deployments.apply(ModelRef("iris"), replicas=2)
    executor = FakeExecutor()
    table = RoutingTable()
    clock = [0.0]
    controller = Controller(
        services.deployments, executor, table, lambda d: services.settings.blob_dir / d,
        max_starts_per_minute=3, clock=lambda: clock[0],
    )  # fmt: skip

    await controller.step()
    assert len(executor.started) == 2
    assert executor.started[0].digest == services.registry.resolve(ModelRef("iris")).artifact.digest
    route = table.get("iris")
    assert route is not None
    assert route.endpoints == ()  # nothing ready yet

    executor.set_all(ReplicaState.READY)
    await controller.step()
    assert len(table.routes["iris"].endpoints) == 2

    executor.set_all(ReplicaState.FAILED)
    await controller.step()
    assert len(executor.started) == 3  # the start budget (3 a minute) is spent
    assert controller.view.failures.get("iris") == "failed"
    clock[0] += 61
    executor.set_all(ReplicaState.FAILED)
    await controller.step()
    assert len(executor.started) == 5

    services.deployments.delete("iris")
    await controller.step()
    assert executor.replicas == {}
    assert table.get("iris") is None


class FakeLoad:
    def __init__(self) -> None:
        self.in_flight = 0
        self.busy = 0.0
        self.done = 0
        self.outstanding_by_replica: dict[str, int] = {}

    def load(self, deployment: str) -> tuple[int, float, int]:
        return (self.in_flight, self.busy, self.done)

    def outstanding(self, replica_id: str) -> int:
        return self.outstanding_by_replica.get(replica_id, 0)

    def prune(self, replicas: dict[str, str]) -> None:
        self.pruned = replicas


def make(services, executor, table, clock, load=None) -> Controller:
    return Controller(
        services.deployments, executor, table, lambda d: services.settings.blob_dir / d,
        max_starts_per_minute=30, clock=lambda: clock[0], load=load, nodes=services.nodes,
    )  # fmt: skip


async def test_scale_down_drains_until_requests_finish(platform, iris_bytes) -> None:
    services = platform.services
    await services.registry.push(PushRequest("iris"), body(iris_bytes))
    services.deployments.apply(ModelRef("iris"), replicas=2)
    executor, table, clock, load = FakeExecutor(), RoutingTable(), [0.0], FakeLoad()
    controller = make(services, executor, table, clock, load)
    await controller.step()
    executor.set_all(ReplicaState.READY)
    await controller.step()
    assert len(table.routes["iris"].endpoints) == 2

    services.deployments.apply(ModelRef("iris"), replicas=1)
    await controller.step()
    route = table.routes["iris"]
    assert len(route.endpoints) == 1  # out of the routes at once...
    draining = next(
        r for r in controller.view.replicas_of("iris") if r.state == ReplicaState.DRAINING
    )
    assert draining.id not in {e.replica_id for e in route.endpoints}
    load.outstanding_by_replica[draining.id] = 1
    clock[0] += 5
    await controller.step()
    assert executor.stopped == []  # ...but alive while it still holds a request
    load.outstanding_by_replica[draining.id] = 0
    await controller.step()
    assert executor.stopped == [draining.id]
    actions = [e["action"] for e in controller.view.events_of("iris")]
    assert actions[-2:] == ["drain", "stop"]


async def test_pending_replicas_carry_the_reason(platform, iris_bytes) -> None:
    services = platform.services
    await services.registry.push(PushRequest("iris"), body(iris_bytes))
    from modelplane.registry.deployments import Scheduling

    services.deployments.apply(
        ModelRef("iris"), replicas=3, scheduling=Scheduling(resources=Resources(4, 512))
    )
    executor, table, clock = FakeExecutor(cpus=2), RoutingTable(), [0.0]
    controller = make(services, executor, table, clock)
    await controller.step()
    assert executor.started == []
    assert (
        controller.view.pending.get("iris", [])
        == [
            "needs 4 CPU per replica; the largest free is 2 CPU on n1 (no node has more than 2 CPU)"
        ]
        * 3
    )
    services.deployments.apply(
        ModelRef("iris"), replicas=3, scheduling=Scheduling(resources=Resources(0.5, 512))
    )
    await controller.step()
    assert len(executor.started) == 3
    assert {s.node for s in executor.started} == {"n1"}
    assert controller.view.pending.get("iris", []) == []


async def test_autoscaling_follows_the_gateway_load(platform, iris_bytes) -> None:
    from modelplane.domain import Autoscaling
    from modelplane.registry.deployments import Scheduling

    services = platform.services
    await services.registry.push(PushRequest("iris"), body(iris_bytes))
    policy = Autoscaling(min_replicas=0, max_replicas=3, target_ongoing_requests=1,
                         upscale_delay_s=2, downscale_delay_s=5)  # fmt: skip
    services.deployments.apply(ModelRef("iris"), replicas=0,
                               scheduling=Scheduling(autoscaling=policy))  # fmt: skip
    executor, table, clock, load = FakeExecutor(), RoutingTable(), [0.0], FakeLoad()
    controller = make(services, executor, table, clock, load)
    await controller.step()
    assert executor.started == []
    assert table.routes["iris"].cold_start_s == 60.0

    load.in_flight = 1  # a request is held at the gateway
    clock[0] += 1
    await controller.step()
    assert len(executor.replicas) == 1  # cold start: at once
    load.in_flight = 0
    for _ in range(4):  # 3 requests in flight on average for 4 seconds
        clock[0] += 1
        load.busy += 3.0
        load.done += 30
        await controller.step()
    assert len(executor.replicas) == 3
    assert controller.view.scale.get("iris") == 3
    executor.set_all(ReplicaState.READY)
    idle = 0
    while controller.view.scale.get("iris") != 0:
        idle += 1
        assert idle <= 8, "no scale down after 8 idle seconds"
        clock[0] += 1
        await controller.step()
    assert idle >= 5  # not before the downscale delay
    # scaled to zero: the three leave the routes and drain, then stop
    assert [r.state for r in controller.view.replicas_of("iris")] == [ReplicaState.DRAINING] * 3
    assert table.routes["iris"].endpoints == ()
    clock[0] += 1
    await controller.step()
    assert executor.replicas == {}
    assert load.pruned == {}  # the gateway is told to forget them
    assert any(e["action"] == "scale" for e in controller.view.events_of("iris"))


async def test_draining_a_node_moves_its_replicas_without_a_gap(platform, iris_bytes) -> None:
    services = platform.services
    await services.registry.push(PushRequest("iris"), body(iris_bytes))
    services.deployments.apply(ModelRef("iris"), replicas=2)
    executor, table, clock = FakeExecutor(nodes=3), RoutingTable(), [0.0]
    controller = make(services, executor, table, clock)
    await controller.step()
    executor.set_all(ReplicaState.READY)
    await controller.step()
    victim = executor.started[0].node
    services.nodes.cordon(victim, drain=True, reason="kernel upgrade", by="test")
    await controller.step()
    assert {n.id: n.state.value for n in controller.view.nodes}[victim] == "draining"
    assert len(table.routes["iris"].endpoints) == 2  # still serving from the old node
    assert executor.started[-1].node != victim
    executor.set_all(ReplicaState.READY)
    clock[0] += 1
    await controller.step()
    route = table.routes["iris"]
    assert len(route.endpoints) == 2
    assert all(executor.replicas[e.replica_id].node != victim for e in route.endpoints)
    clock[0] += 1
    await controller.step()
    assert all(r.node != victim for r in executor.replicas.values())
    assert "node " + victim + " is draining" in [
        e["reason"] for e in controller.view.events_of("iris")
    ]

    services.nodes.uncordon(victim)
    await controller.step()
    assert {n.id: n.state.value for n in controller.view.nodes}[victim] == "healthy"


async def test_only_failures_spend_the_restart_budget(platform, iris_bytes) -> None:
    services = platform.services
    await services.registry.push(PushRequest("iris"), body(iris_bytes))
    services.deployments.apply(ModelRef("iris"), replicas=8)
    executor, table, clock = FakeExecutor(cpus=16), RoutingTable(), [0.0]
    controller = Controller(
        services.deployments, executor, table, lambda d: services.settings.blob_dir / d,
        max_starts_per_minute=3, clock=lambda: clock[0],
    )  # fmt: skip
    await controller.step()
    await controller.step()
    await controller.step()
    assert len(executor.started) == 8  # a healthy scale-up is not held back
    executor.set_all(ReplicaState.FAILED)
    for _ in range(5):
        await controller.step()
    assert len(executor.started) == 8  # 8 failures in a minute: backing off
    clock[0] += 61
    await controller.step()
    assert len(executor.started) == 11  # the minute passed: 3 more tries


async def test_a_restart_serves_the_last_good_version_while_the_new_one_crash_loops(
    platform, iris_bytes
) -> None:
    services = platform.services
    await services.registry.push(PushRequest("iris"), body(iris_bytes))
    await services.registry.push(PushRequest("iris", allow_duplicate=True), body(iris_bytes))
    services.deployments.apply(ModelRef("iris", version=1))

    def controller_of(executor: FakeExecutor, table: RoutingTable) -> Controller:
        return Controller(services.deployments, executor, table,
                          lambda d: services.settings.blob_dir / d)  # fmt: skip

    executor, table = FakeExecutor(), RoutingTable()
    controller = controller_of(executor, table)
    await controller.step()
    executor.set_all(ReplicaState.READY)
    await controller.step()  # v1 serves: it is the last good revision from now on
    services.deployments.apply(ModelRef("iris", version=2))
    await controller.step()
    new = [r for r in executor.replicas.values() if r.version == 2]
    executor.replicas[new[0].id] = replace(new[0], state=ReplicaState.FAILED, message="crash")
    await controller.step()
    assert table.routes["iris"].version == "1"  # v1 serves through the failed rollout
    assert services.deployments.get("iris").stable is not None

    # the server restarts: nothing is running, nothing is remembered but the database
    executor, table = FakeExecutor(), RoutingTable()
    controller = controller_of(executor, table)
    await controller.step()
    assert sorted(spec.version for spec in executor.started) == [1, 2]
    for rid, r in list(executor.replicas.items()):
        state = ReplicaState.READY if r.version == 1 else ReplicaState.FAILED
        executor.replicas[rid] = replace(r, state=state, message="crash")
    await controller.step()
    route = table.routes["iris"]
    assert route.version == "1"
    assert [e.replica_id for e in route.endpoints] == [executor.started[0].replica_id]

    # once the new version is ready, it serves and becomes the last good one
    for _ in range(3):
        await controller.step()
        for rid, r in list(executor.replicas.items()):
            executor.replicas[rid] = replace(r, state=ReplicaState.READY, message="")
    await controller.step()
    assert table.routes["iris"].version == "2"
    assert services.deployments.get("iris").stable is None  # v2 is the last good revision now
    routed = {executor.replicas[e.replica_id].version for e in table.routes["iris"].endpoints}
    assert routed == {2}  # v1's replica is drained
    assert [e["action"] for e in controller.view.events_of("iris")][-1] == "drain"
