"""Request and response bodies of the management API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from modelplane.api.traffic_schemas import VersionTrafficOut, traffic_of
from modelplane.deployment_schema import (
    AutoscalingIn,
    PlacementIn,
    ResourcesIn,
    RolloutIn,
    ServingConfigIn,
)
from modelplane.domain import (
    ApiKey,
    Conversion,
    Model,
    ModelVersion,
    Node,
    Replica,
    Resources,
    Role,
    Split,
    SplitMode,
)
from modelplane.domain.traffic import Agreement, Window
from modelplane.errors import InvalidInput
from modelplane.registry.deployments import DeploymentRecord, Scheduling

MAX_LIMIT = 2**31 - 1  # a key's limits are stored as 32-bit integers (on every database)


class TensorOut(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class SignatureOut(BaseModel):
    inputs: list[TensorOut]
    outputs: list[TensorOut]
    task: str = Field("", description="text-generation for a language model (OpenAI API)")


class VersionOut(BaseModel):
    model: str
    version: int
    ref: str
    digest: str
    size: int
    source_format: str
    signature: SignatureOut
    description: str
    tags: dict[str, str]
    created_by: str
    created_at: datetime
    parent: str | None
    aliases: list[str]
    source_digest: str | None = None
    report: dict[str, Any] | None = None
    input_stats: dict[str, Any] | None = None

    @classmethod
    def of(cls, v: ModelVersion) -> VersionOut:
        return cls(
            model=v.model,
            version=v.version,
            ref=v.ref,
            digest=v.artifact.digest,
            size=v.artifact.size,
            source_format=v.source_format,
            signature=SignatureOut.model_validate(v.signature.to_dict()),
            description=v.description,
            tags=v.tags,
            created_by=v.created_by,
            created_at=v.created_at,
            parent=v.parent,
            aliases=list(v.aliases),
            source_digest=v.source_digest,
            report=v.report,
            input_stats=v.input_stats,
        )


class ModelOut(BaseModel):
    name: str
    description: str
    created_at: datetime
    latest_version: int | None
    aliases: dict[str, int]

    @classmethod
    def of(cls, m: Model) -> ModelOut:
        return cls(
            name=m.name,
            description=m.description,
            created_at=m.created_at,
            latest_version=m.latest_version,
            aliases=m.aliases,
        )


class ModelDetail(ModelOut):
    versions: list[VersionOut]


class AliasIn(BaseModel):
    version: int = Field(ge=1, examples=[1])


class CordonIn(BaseModel):
    reason: str = Field("", max_length=256, examples=["kernel upgrade"])
    drain: bool = Field(False, description="also move its replicas elsewhere, without downtime")


def _named(given: BaseModel | None) -> dict[str, Any] | None:
    """Only the fields a client named: the others keep what the deployment has."""
    return None if given is None else given.model_dump(include=given.model_fields_set)


class DeployIn(BaseModel):
    """Create or update. Everything left out keeps what the deployment has (or the defaults
    for a new one); within ``config``, ``resources``, ``placement`` and ``autoscaling`` the
    fields left out keep theirs too. ``reset`` starts from the defaults instead."""

    model: str = Field(description="NAME, NAME:VERSION or NAME@ALIAS", examples=["iris@production"])
    name: str | None = Field(None, description="deployment name; default: the model's name")
    replicas: int | None = Field(
        None, ge=0, le=64, description="omitted keeps the current count (1 for a new deployment)"
    )
    config: ServingConfigIn | None = Field(None, description="batching and back-pressure")
    resources: ResourcesIn | None = Field(None, description="what each replica reserves")
    placement: PlacementIn | None = Field(None, description="where replicas may go, and how")
    autoscaling: AutoscalingIn | None = Field(None, description="turns autoscaling on or tunes it")
    autoscaling_off: bool = Field(False, description="turn autoscaling off (fixed replicas)")
    reset: bool = Field(
        False, description="settings left out go back to their defaults instead of being kept"
    )
    canary: float | None = Field(None, gt=0, le=100, description="serve this version beside "
                                 "the current one, for this percentage of requests")  # fmt: skip
    shadow: bool = Field(
        False,
        description="serve this version beside the current one on a "
        "copy of every request (its answers compared, then discarded)",
    )
    rollout: RolloutIn | None = Field(None, description="later versions take over step by step")
    rollout_off: bool = Field(False, description="later versions take over at once again")

    def config_change(self) -> dict[str, Any] | None:
        return _named(self.config)

    def scheduling(self) -> Scheduling:
        return Scheduling(
            resources=_named(self.resources),
            placement=_named(self.placement),
            autoscaling=_named(self.autoscaling),
            clear_autoscaling=self.autoscaling_off,
            reset=self.reset,
            rollout=None if self.rollout is None else self.rollout.policy(),
            clear_rollout=self.rollout_off,
        )

    def split(self) -> Split | None:
        if self.canary is not None and self.shadow:
            raise InvalidInput("canary and shadow contradict each other: give one")
        if self.shadow:
            return Split(SplitMode.SHADOW, 0.0)
        return None if self.canary is None else Split(SplitMode.CANARY, self.canary)


class ReplicaOut(BaseModel):
    id: str
    version: int
    state: str
    pid: int | None
    started_at: float
    message: str
    node: str = ""
    placement: str = Field("", description="why this node was chosen")
    resources: ResourcesIn | None = None

    @classmethod
    def of(cls, r: Replica, placement: str = "") -> ReplicaOut:
        return cls(
            id=r.id,
            version=r.version,
            state=r.state.value,
            pid=r.pid,
            started_at=r.started_at,
            message=r.message,
            node=r.node,
            placement=placement,
            resources=ResourcesIn.model_validate(r.resources.to_dict()),
        )


class NodeOut(BaseModel):
    id: str
    state: str
    address: str
    labels: dict[str, str]
    zone: str
    instance_type: str
    cost_per_hour: float
    gpu_type: str
    capacity: ResourcesIn
    allocated: dict[str, float]
    replicas: int
    maintenance: str = Field("", description="why an operator cordoned or is draining it")

    @classmethod
    def of(cls, node: Node, on_node: list[Replica], maintenance: str = "") -> NodeOut:
        used = sum((r.resources for r in on_node), Resources())
        return cls(
            id=node.id,
            state=node.state.value,
            address=node.address,
            labels=dict(node.labels),
            zone=node.zone,
            instance_type=node.instance_type,
            cost_per_hour=node.cost_per_hour,
            gpu_type=node.gpu_type,
            # not validated: a lost node may report no capacity at all
            capacity=ResourcesIn.model_construct(
                cpu=node.capacity.cpu, memory_mb=node.capacity.memory_mb, gpus=node.capacity.gpus
            ),
            allocated=used.to_dict(),
            replicas=len(on_node),
            maintenance=maintenance,
        )


class DeploymentOut(BaseModel):
    name: str
    model: str
    version: int
    ref: str
    desired_replicas: int
    ready_replicas: int
    state: str
    created_at: datetime
    updated_at: datetime
    replicas: list[ReplicaOut]
    last_failure: str | None
    endpoint: str
    config: ServingConfigIn
    resources: ResourcesIn
    placement: PlacementIn
    autoscaling: AutoscalingIn | None
    pending: list[str] = Field(
        default_factory=list, description="why each wanted replica is not placed yet"
    )
    events: list[dict[str, Any]] = Field(default_factory=list)
    reconciled: bool = Field(
        True, description="the controller has acted on the deployment as it now stands"
    )
    traffic: list[VersionTrafficOut] = Field(default_factory=list)
    rollout: RolloutIn | None = None
    rollout_status: str = Field("", description="where a rollout in progress stands")
    last_rollout: dict[str, Any] | None = Field(
        None, description="how the last canary, shadow or rollout ended, and why"
    )
    previous: str = Field("", description="the version `rollback` returns to, with no canary")

    @classmethod
    def of(
        cls,
        record: DeploymentRecord,
        replicas: list[Replica],
        *,
        last_failure: str | None = None,
        target: int | None = None,
        placement: Callable[[str], str] = lambda replica_id: "",
        pending: list[str] | None = None,
        events: list[dict[str, Any]] | None = None,
        reconciled: bool = True,
        rollout_status: str = "",
        measured: Callable[[int], Window] = lambda version: Window(),
        agreed: Agreement | None = None,
    ) -> DeploymentOut:
        d = record.deployment
        # ready means the deployment as it now stands: its version, config and resources
        ready = sum(1 for r in replicas if r.state == "ready" and r.revision == d.revision)
        desired = d.replicas if target is None else target
        if desired == 0:
            state = "scaled to zero" if d.autoscaling is not None else "stopped"
        elif ready >= desired:
            state = "ready"
        elif any(r.state == "ready" and r.revision != d.revision for r in replicas):
            state = "updating"  # the previous revision serves until the new one is ready
        elif ready > 0:
            state = "degraded"
        else:
            state = "pending"
        return cls(
            name=d.name,
            model=d.model,
            version=d.version,
            ref=d.ref,
            desired_replicas=desired,
            ready_replicas=ready,
            state=state,
            created_at=d.created_at,
            updated_at=d.updated_at,
            replicas=[ReplicaOut.of(r, placement(r.id)) for r in replicas],
            last_failure=last_failure,
            pending=pending or [],
            events=events or [],
            reconciled=reconciled,
            endpoint=f"/v2/models/{d.name}/infer",
            config=ServingConfigIn.model_validate(d.config.to_dict()),
            resources=ResourcesIn.model_validate(d.resources.to_dict()),
            placement=PlacementIn.model_validate(d.placement.to_dict()),
            autoscaling=(
                None
                if d.autoscaling is None
                else AutoscalingIn.model_validate(d.autoscaling.to_dict())
            ),
            traffic=traffic_of(record, replicas, measured, agreed or Agreement()),
            rollout=None if d.rollout is None else RolloutIn.model_validate(d.rollout.to_dict()),
            rollout_status=rollout_status,
            last_rollout=None if record.outcome is None else dict(record.outcome),
            previous=record.previous,
        )


class ErrorOut(BaseModel):
    error: str
    code: str


def error_doc(message: str, code: str) -> dict[str, Any]:
    return {"error": message, "code": code}


class ConversionOut(BaseModel):
    id: str
    model: str
    source_format: str
    state: str
    stage: str
    error: str | None
    report: dict[str, Any] | None
    version: int | None
    created_at: datetime
    updated_at: datetime
    url: str

    @classmethod
    def of(cls, c: Conversion) -> ConversionOut:
        return cls(
            id=c.id,
            model=c.model,
            source_format=c.source_format,
            state=c.state,
            stage=c.stage,
            error=c.error,
            report=c.report,
            version=c.version,
            created_at=c.created_at,
            updated_at=c.updated_at,
            url=f"/api/v1/conversions/{c.id}",
        )


class OptimizeIn(BaseModel):
    level: str | None = Field(None, description="basic, extended or all", examples=["all"])
    quantize: str | None = Field(None, description="int8 or fp16", examples=["int8"])
    auto: bool = Field(False, description="try every way (graph optimization, int8 dynamic "
                       "and static, fp16, structured pruning) and keep the fastest within "
                       "max_accuracy_drop")  # fmt: skip
    max_accuracy_drop: float = Field(
        0.005, ge=0, le=1, description="with auto: the share of sample rows whose prediction "
        "may change (0.005: 0.5%)",
    )  # fmt: skip
    samples: str | None = Field(None, description="digest from POST /samples to measure on "
                                "(default: the samples pushed with the version)")  # fmt: skip


class SamplesOut(BaseModel):
    digest: str
    size: int


class KeyIn(BaseModel):
    name: str = Field(..., min_length=1, max_length=128, examples=["ci"])
    role: Role = Field(..., description="admin, operator, publisher, invoker or viewer")
    models: list[str] | None = Field(
        None, description="model names or globs this key may see (default: every model)",
        examples=[["fraud-*"]],
    )  # fmt: skip
    expires: str | None = Field(
        None, description="30d, 12h, 10m, 30s or an ISO time (default: never)", examples=["30d"]
    )
    rate_limit: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="requests per second (token bucket)",
        examples=[50],
    )  # fmt: skip
    burst: int | None = Field(
        None, ge=1, le=MAX_LIMIT, examples=[100],
        description="requests at once above the rate (default: one second's worth)",
    )  # fmt: skip
    max_concurrent: int | None = Field(
        None, ge=1, le=MAX_LIMIT, description="requests in flight at once"
    )
    daily: int | None = Field(
        None, ge=1, le=MAX_LIMIT, description="requests per UTC day (per gateway)"
    )
    daily_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_LIMIT,
        description="language-model tokens (prompt + completion) per UTC day",
    )


class KeyUpdateIn(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=128)
    role: Role | None = None
    models: list[str] | None = Field(None, description='["*"] for every model')
    expires: str | None = Field(None, description="30d, an ISO time, or never")
    rate_limit: float | None = Field(
        None, ge=0, le=MAX_LIMIT, allow_inf_nan=False, description="0 removes it"
    )
    burst: int | None = Field(None, ge=0, le=MAX_LIMIT, description="0 removes it")
    max_concurrent: int | None = Field(None, ge=0, le=MAX_LIMIT, description="0 removes it")
    daily: int | None = Field(None, ge=0, le=MAX_LIMIT, description="0 removes it")
    daily_tokens: int | None = Field(None, ge=0, le=MAX_LIMIT, description="0 removes it")


class RotateIn(BaseModel):
    grace: str = Field(
        "0s", description="how long the old secret keeps working: 30s, 10m, 1h, 1d",
        examples=["1h"],
    )  # fmt: skip


class KeyOut(BaseModel):
    id: str
    name: str
    role: Role
    models: list[str]
    state: str = Field(description="active, expired or revoked")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="written every few seconds")
    rotated_at: datetime | None
    previous_expires_at: datetime | None = Field(
        description="until when the secret replaced by the last rotation still works"
    )
    rate_limit: float | None = Field(None, description="requests per second; null: no limit")
    burst: int | None = Field(None, description="null: one second's worth of the rate")
    max_concurrent: int | None = None
    daily: int | None = Field(None, description="requests per UTC day, counted per gateway")
    daily_tokens: int | None = Field(
        None, description="language-model tokens per UTC day, counted per gateway"
    )

    @classmethod
    def of(cls, key: ApiKey, now: datetime) -> KeyOut:
        expired = key.expires_at is not None and key.expires_at <= now
        previous = key.previous_expires_at
        return cls(
            id=key.id,
            name=key.name,
            role=key.role,
            models=list(key.models),
            state="revoked" if key.revoked else "expired" if expired else "active",
            created_at=key.created_at,
            expires_at=key.expires_at,
            last_used_at=key.last_used_at,
            rotated_at=key.rotated_at,
            previous_expires_at=previous if previous is not None and previous > now else None,
            rate_limit=key.rate_limit,
            burst=key.burst,
            max_concurrent=key.max_concurrent,
            daily=key.daily,
            daily_tokens=key.daily_tokens,
        )


class KeyCreated(KeyOut):
    secret: str = Field(description="the key itself: shown this once, never again")
