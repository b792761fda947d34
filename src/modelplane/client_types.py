"""What the management API answers, as the SDK types it (plain dicts, typed for editors and
mypy)."""

from __future__ import annotations

from typing import Any, TypedDict


class Tensor(TypedDict):
    name: str
    datatype: str
    shape: list[int]


class Signature(TypedDict):
    inputs: list[Tensor]
    outputs: list[Tensor]
    task: str  # "text-generation" for a language model, else ""


class Version(TypedDict):
    model: str
    version: int
    ref: str
    digest: str
    size: int
    source_format: str
    signature: Signature
    description: str
    tags: dict[str, str]
    created_by: str
    created_at: str
    parent: str | None
    aliases: list[str]
    source_digest: str | None
    report: dict[str, Any] | None


class ModelSummary(TypedDict):
    name: str
    description: str
    created_at: str
    latest_version: int | None
    aliases: dict[str, int]


class ModelDetail(ModelSummary):
    versions: list[Version]


class ReplicaInfo(TypedDict):
    id: str
    version: int
    state: str
    pid: int | None
    started_at: float
    message: str
    node: str
    placement: str
    resources: dict[str, Any] | None


class DeploymentInfo(TypedDict):
    name: str
    model: str
    version: int
    ref: str
    desired_replicas: int
    ready_replicas: int
    state: str
    created_at: str
    updated_at: str
    replicas: list[ReplicaInfo]
    last_failure: str | None
    endpoint: str
    config: dict[str, Any]
    resources: dict[str, Any]
    placement: dict[str, Any]
    autoscaling: dict[str, Any] | None
    pending: list[str]
    events: list[dict[str, Any]]
    reconciled: bool
    traffic: list[dict[str, Any]]  # each version served: version, ref, role, percent, ready
    rollout: dict[str, Any] | None
    rollout_status: str
    last_rollout: dict[str, Any] | None
    previous: str


class KeyInfo(TypedDict, total=False):
    id: str
    name: str
    role: str
    models: list[str]
    state: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    rotated_at: str | None
    previous_expires_at: str | None
    rate_limit: float | None
    burst: int | None
    max_concurrent: int | None
    daily: int | None
    daily_tokens: int | None
    secret: str  # only in the answers to create_key and rotate_key


class AuditEntry(TypedDict):
    """One entry of the audit trail: when, who (key id and name), from where, what, result."""

    id: int
    at: str
    action: str  # push, deploy, key.create, ..., or denied
    key_id: str | None
    key_name: str | None
    source: str  # the client's address
    target: str
    result: str  # the HTTP status answered
    detail: str
