"""A deployment's settings as clients give them (the API's deploy body, the platform spec):
batching and back-pressure, resources, placement, autoscaling and the rollout policy, each
field with its bounds and default."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from modelplane.domain import DEFAULT_REQUEST, RolloutPolicy
from modelplane.errors import InvalidInput


class ServingConfigIn(BaseModel):
    """Batching and back-pressure of a deployment."""

    max_batch_size: int = Field(32, ge=1, le=4096, description="largest merged batch; 1 = off")
    max_queue_delay_ms: float = Field(
        0.0, ge=0, le=10_000, description="wait this long for a fuller batch; 0 = never wait"
    )
    preferred_batch_sizes: list[int] = Field(default_factory=list, max_length=16)
    max_queued_requests: int = Field(
        256, ge=1, le=100_000, description="requests in flight before the gateway answers 429"
    )
    payload_log_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="share of request/response bodies logged; 0 = off"
    )
    input_guard: Literal["off", "log", "flag", "reject"] = Field(
        "off",
        description="inputs far outside the version's sample statistics: log them, flag them "
        "(Modelplane-Input-Outlier header) or reject them (422)",
    )
    input_guard_sigmas: float = Field(
        6.0, gt=0, le=1e6, description="how far beyond the samples' range is an outlier, in std"
    )


class ResourcesIn(BaseModel):
    """What each replica reserves on its node."""

    cpu: float = Field(DEFAULT_REQUEST.cpu, gt=0, le=1024, description="CPU cores per replica")
    memory_mb: int = Field(
        DEFAULT_REQUEST.memory_mb, gt=0, le=16 * 1024 * 1024, description="memory per replica (MB)"
    )
    gpus: int = Field(0, ge=0, le=64, description="GPUs per replica")


class PlacementIn(BaseModel):
    """Where replicas may run, and how cost, spreading and packing are weighed."""

    node_labels: dict[str, str] = Field(
        default_factory=dict,
        description="labels a node must have",
        examples=[{"instance_type": "m5.xlarge"}],
    )
    zones: list[str] = Field(
        default_factory=list, max_length=64, description="zones replicas may run in; [] = any"
    )
    gpu_type: str = Field("", max_length=64, description="GPU type a node must have")
    spread_zones: bool = Field(True, description="spread replicas over zones as well as nodes")
    cost_weight: float = Field(1.0, ge=0, le=100)
    spread_weight: float = Field(1.0, ge=0, le=100)
    pack_weight: float = Field(1.0, ge=0, le=100)


class AutoscalingIn(BaseModel):
    """Replica bounds and the load per replica to aim for."""

    min_replicas: int = Field(1, ge=0, le=64)
    max_replicas: int = Field(1, ge=1, le=64)
    target_ongoing_requests: float = Field(2.0, gt=0, le=10_000)
    target_latency_ms: float | None = Field(None, gt=0)
    upscale_delay_s: float = Field(5.0, ge=0, le=3600)
    downscale_delay_s: float = Field(60.0, ge=0, le=86_400)
    cold_start_timeout_s: float = Field(60.0, gt=0, le=3600)


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
