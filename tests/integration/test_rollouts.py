"""Canaries and rollouts in the reconcile loop: real stores, a fake executor, a fake clock and
a fake watch (what the gateway would have measured), so each step's verdict is exact."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.integration.test_controller import FakeExecutor, body

from modelplane.domain import ModelRef, ReplicaState, RolloutPolicy, Split, SplitMode
from modelplane.domain.traffic import Agreement, Window
from modelplane.errors import Conflict, InvalidInput, NotFound
from modelplane.registry.deployments import Scheduling
from modelplane.registry.service import PushRequest
from modelplane.scheduler.controller import Controller
from modelplane.scheduler.rollouts import Rollouts
from modelplane.serving.routing import Canary, RoutingTable

POLICY = RolloutPolicy(steps=(10.0, 50.0, 100.0), interval_s=60.0, min_requests=20)


class FakeWatch:
    def __init__(self) -> None:
        self.windows: dict[str, Window] = {}
        self.agreed = Agreement()

    def window(self, deployment: str, version: str, since: float) -> Window:
        return self.windows.get(version, Window())

    def agreement(self, deployment: str, since: float) -> Agreement:
        return self.agreed


class Rig:
    """iris v1 serving with a rollout policy; v2 pushed, not deployed yet."""

    def __init__(self, services) -> None:
        self.services = services
        self.executor, self.table = FakeExecutor(), RoutingTable()
        self.watch, self.wall = FakeWatch(), [1000.0]
        self.audited: list[tuple[str, str, str]] = []
        rollouts = Rollouts(services.deployments, self.watch,
                            lambda *entry: self.audited.append(entry),
                            clock=lambda: self.wall[0])  # fmt: skip
        self.controller = Controller(services.deployments, self.executor, self.table,
                                     lambda d: services.settings.blob_dir / d,
                                     rollouts=rollouts)  # fmt: skip

    async def settle(self) -> None:
        """Two steps with every replica ready in between."""
        await self.controller.step()
        for rid, r in list(self.executor.replicas.items()):
            self.executor.replicas[rid] = replace(r, state=ReplicaState.READY)
        await self.controller.step()

    def canary(self) -> Canary:
        canary = self.table.routes["iris"].canary
        assert canary is not None
        return canary

    def versions(self) -> list[int]:
        """The versions of the replicas that are not on their way out."""
        gone = (ReplicaState.DRAINING, ReplicaState.STOPPED)
        return sorted(r.version for r in self.controller.view.replicas if r.state not in gone)


@pytest.fixture
async def rig(platform, iris_bytes) -> Rig:
    services = platform.services
    await services.registry.push(PushRequest("iris"), body(iris_bytes))
    await services.registry.push(PushRequest("iris", allow_duplicate=True), body(iris_bytes))
    services.deployments.apply(ModelRef("iris", 1), replicas=4,
                               scheduling=Scheduling(rollout=POLICY))  # fmt: skip
    made = Rig(services)
    await made.settle()
    return made


async def start_rollout(rig: Rig) -> None:
    record = rig.services.deployments.apply(ModelRef("iris", 2))
    assert record.deployment.version == 1  # still the current version: v2 is the candidate
    assert record.split == Split(SplitMode.ROLLOUT, 10.0)
    await rig.controller.step()
    assert rig.versions() == [1, 1, 1, 1, 2]  # 10% of 4 replicas: one of v2
    route = rig.table.routes["iris"]
    assert route.canary is not None
    assert route.canary.endpoints == ()
    await rig.settle()
    split = rig.services.deployments.get("iris").split
    assert split is not None
    assert split.since == rig.wall[0]
    assert rig.canary().percent == 10.0


async def test_a_good_version_reaches_every_request_on_its_own(rig: Rig) -> None:
    await start_rollout(rig)
    rig.watch.windows = {"1": Window(900, 1, 5.0), "2": Window(100, 0, 5.5)}
    rig.watch.agreed = Agreement(100, 0, 1e-6)
    rig.wall[0] += 30
    await rig.controller.step()
    assert rig.services.deployments.get("iris").split.percent == 10.0  # the step lasts 60 s
    assert "step 1 of 3 (10%): 30 s of 60 s" in rig.controller.view.rollouts["iris"]
    for share in (50.0, 100.0):
        rig.wall[0] += 61
        await rig.settle()
        assert rig.services.deployments.get("iris").split.percent == share
        assert rig.canary().percent == share
    assert rig.versions().count(2) == 4  # 100%: as many replicas as the current version
    rig.wall[0] += 61
    await rig.settle()
    record = rig.services.deployments.get("iris")
    assert record.deployment.version == 2
    assert record.candidate is None
    assert record.outcome["result"] == "promoted"
    assert record.previous == "iris:1"
    assert rig.table.routes["iris"].version == "2"
    assert rig.table.routes["iris"].canary is None
    await rig.settle()
    assert rig.versions() == [2, 2, 2, 2]  # v1 drains
    actions = [a for a, _, _ in rig.audited]
    assert actions == ["deployment.rollout"] * 3 + ["deployment.promote"]


@pytest.mark.parametrize(
    ("candidate", "agreed", "why"),
    [
        (Window(100, 0, 40.0), Agreement(100, 0, 0.0), "p99 latency 40.0 ms is 8.0x"),
        (Window(100, 12, 5.0), Agreement(88, 0, 0.0), "error rate 12.0% over 100 requests"),
        (
            Window(100, 0, 5.0),
            Agreement(100, 20, 2.5),
            "disagree with the current version's on 20.0% of 100 compared rows",
        ),
    ],
    ids=["slow", "erroring", "disagreeing"],
)
async def test_a_worse_version_is_rolled_back_at_the_first_step(
    rig: Rig, candidate: Window, agreed: Agreement, why: str
) -> None:
    await start_rollout(rig)
    rig.watch.windows = {"1": Window(900, 0, 5.0), "2": candidate}
    rig.watch.agreed = agreed
    rig.wall[0] += 10  # well within the first step: a breach does not wait for its end
    await rig.controller.step()
    record = rig.services.deployments.get("iris")
    assert record.deployment.version == 1
    assert record.candidate is None
    assert record.outcome["result"] == "rolled back"
    assert why in record.outcome["reason"]
    assert rig.table.routes["iris"].canary is None
    assert rig.audited[-1][0] == "deployment.rollback"
    assert why in rig.audited[-1][2]
    events = {e["action"]: e["reason"] for e in rig.controller.view.events_of("iris")}
    assert why in events["rollback"]
    assert events["drain"] == "replaced by a new revision"
    await rig.settle()
    assert rig.versions() == [1, 1, 1, 1]  # v2's replica drains


async def test_too_little_traffic_holds_the_step(rig: Rig) -> None:
    await start_rollout(rig)
    rig.watch.windows = {"1": Window(90, 0, 5.0), "2": Window(5, 0, 5.0)}
    rig.wall[0] += 120
    await rig.controller.step()
    assert rig.services.deployments.get("iris").split.percent == 10.0
    assert "waits for traffic: 5 of 20" in rig.controller.view.rollouts["iris"]


async def test_canary_promote_and_rollback_by_hand(rig: Rig, iris_bytes: bytes) -> None:
    store = rig.services.deployments
    await rig.services.registry.push(PushRequest("iris", allow_duplicate=True), body(iris_bytes))
    store.apply(ModelRef("iris", 2), split=Split(SplitMode.CANARY, 25.0))
    await rig.settle()
    route = rig.table.routes["iris"]
    assert (route.version, rig.canary().version, rig.canary().percent) == ("1", "2", 25.0)
    assert rig.versions() == [1, 1, 1, 1, 2]
    store.apply(ModelRef("iris", 1), replicas=4)  # the same version: settings may change
    with pytest.raises(Conflict, match=r"promote .* or roll back"):
        store.apply(ModelRef("iris", 3))
    rig.wall[0] += 3600  # a hand-run canary never moves on its own
    await rig.settle()
    assert store.get("iris").split == Split(SplitMode.CANARY, 25.0)
    store.rollback("iris", "by hand")
    await rig.settle()
    assert rig.table.routes["iris"].canary is None
    assert rig.versions() == [1, 1, 1, 1]

    store.apply(ModelRef("iris", 2), split=Split(SplitMode.SHADOW, 0.0))
    await rig.settle()
    canary = rig.canary()
    assert canary.shadow
    assert canary.percent == 0.0
    assert len(canary.endpoints) == 1
    record = store.promote("iris", "by hand")
    assert record.deployment.version == 2
    assert record.previous == "iris:1"
    await rig.settle()
    await rig.settle()
    assert rig.table.routes["iris"].version == "2"
    assert rig.versions() == [2, 2, 2, 2]
    record = store.rollback("iris", "by hand")  # no candidate: back to the version before
    assert record.deployment.version == 1
    assert record.previous == ""
    with pytest.raises(Conflict, match="nothing to roll back"):
        store.rollback("iris", "again")


async def test_bad_canaries_say_what_is_wrong(rig: Rig) -> None:
    store = rig.services.deployments
    with pytest.raises(InvalidInput, match="iris:1 is what 'iris' serves already"):
        store.apply(ModelRef("iris", 1), split=Split(SplitMode.CANARY, 10.0))
    with pytest.raises(NotFound, match="does not exist yet: a canary or shadow runs beside"):
        store.apply(ModelRef("iris", 2), name="other", split=Split(SplitMode.CANARY, 10.0))
    with pytest.raises(ValueError, match="percentage from 0 to 100"):
        Split(SplitMode.CANARY, 120.0)
    with pytest.raises(ValueError, match="steps must rise"):
        RolloutPolicy.parse("steps=50,10")
    with pytest.raises(ValueError, match="invalid rollout setting 'speed=fast'"):
        RolloutPolicy.parse("speed=fast")
    assert RolloutPolicy.parse("steps=5,100 interval=2m max-error-rate=1%") == RolloutPolicy(
        steps=(5.0, 100.0), interval_s=120.0, max_error_rate=0.01
    )
