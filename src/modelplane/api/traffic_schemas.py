"""What the API says about traffic between a deployment's versions: its rollout policy, and
each version it serves with its share of requests and what was measured of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from modelplane.domain import Deployment, Replica, RolloutPolicy, SplitMode
from modelplane.domain.traffic import Agreement, Window
from modelplane.errors import InvalidInput
from modelplane.registry.deployments import DeploymentRecord


class RolloutIn(BaseModel):
    """How a new version takes over: step by step, each step judged on the platform's own
    measurements against the current version (see docs/concepts.md, "Rollouts")."""

    steps: list[float] = Field(
        [10.0, 50.0, 100.0],
        min_length=1,
        max_length=20,
        description="the new version's share of requests, step by step",
    )
    interval_s: float = Field(120.0, gt=0, le=86_400, description="how long each step lasts")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="5xx share that rolls back")
    max_p99_ratio: float = Field(1.2, ge=1, description="p99 against the current version's")
    max_disagreement: float = Field(0.02, ge=0, le=1, description="share of rows whose outputs "
                                    "disagree with the current version's")  # fmt: skip
    min_requests: int = Field(20, ge=1, description="requests before a step is judged")
    p99_slack_ms: float = Field(2.0, ge=0, description="p99 differences below this are noise")

    def policy(self) -> RolloutPolicy:
        try:
            return RolloutPolicy.from_dict(self.model_dump())
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None


class VersionTrafficOut(BaseModel):
    """One version a deployment serves, and its share of requests."""

    version: int
    ref: str
    role: Literal["current", "canary", "shadow", "rollout"]
    percent: float = Field(description="share of requests it answers (a shadow: 0, on copies)")
    ready_replicas: int
    # measured by this server's gateway while two versions serve (this rollout step's window)
    requests: int = 0
    errors: int = Field(0, description="answers with a 5xx status")
    p99_ms: float | None = None
    compared_rows: int = Field(0, description="rows answered by both versions and compared")
    disagreeing_rows: int = Field(0, description="compared rows whose outputs differ")


def traffic_of(
    record: DeploymentRecord,
    replicas: list[Replica],
    measured: Callable[[int], Window],
    agreed: Agreement,
) -> list[VersionTrafficOut]:
    def version(d: Deployment, role: str, percent: float) -> VersionTrafficOut:
        seen = measured(d.version)
        return VersionTrafficOut.model_validate({
            "version": d.version, "ref": d.ref, "role": role, "percent": percent,
            "ready_replicas": sum(1 for r in replicas
                                  if r.state == "ready" and r.revision == d.revision),
            "requests": seen.requests, "errors": seen.errors, "p99_ms": seen.p99_ms,
        })  # fmt: skip

    d, split, candidate = record.deployment, record.split, record.candidate
    if candidate is None or split is None:
        return [version(d, "current", 100.0)]
    share = 0.0 if split.mode == SplitMode.SHADOW else split.percent
    beside = version(candidate.deployment, split.mode.value, share)
    beside.compared_rows, beside.disagreeing_rows = agreed.rows, agreed.disagreeing
    return [version(d, "current", 100 - share), beside]
