"""What the API says about traffic between a deployment's versions: its rollout policy, and
each version it serves with its share of requests and what was measured of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from modelplane.domain import Deployment, Replica, SplitMode
from modelplane.domain.traffic import Agreement, Window
from modelplane.registry.deployments import DeploymentRecord


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
