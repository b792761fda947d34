"""The reconcile loop against real stores and a fake executor (the one seam with side effects)."""

from __future__ import annotations

from dataclasses import replace

from modelplane.cluster.executor import ReplicaSpec
from modelplane.domain import ModelRef, Replica, ReplicaState
from modelplane.registry.service import PushRequest
from modelplane.scheduler.controller import Controller
from modelplane.serving.routing import RoutingTable


class FakeExecutor:
    def __init__(self) -> None:
        self.replicas: dict[str, Replica] = {}
        self.started: list[ReplicaSpec] = []

    async def start(self, spec: ReplicaSpec) -> Replica:
        self.started.append(spec)
        replica = Replica(spec.replica_id, spec.deployment, spec.model, spec.version,
                          f"unix:/{spec.replica_id}", ReplicaState.STARTING, 0.0)  # fmt: skip
        self.replicas[spec.replica_id] = replica
        return replica

    async def stop(self, replica_id: str) -> None:
        self.replicas.pop(replica_id, None)

    async def observe(self) -> list[Replica]:
        return list(self.replicas.values())

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
    assert controller.last_failure("iris") == "failed"
    clock[0] += 61
    executor.set_all(ReplicaState.FAILED)
    await controller.step()
    assert len(executor.started) == 5

    services.deployments.delete("iris")
    await controller.step()
    assert executor.replicas == {}
    assert table.get("iris") is None
