"""The typed bundle of control-plane services that routes use (no globals, no app.state)."""

from __future__ import annotations

from dataclasses import dataclass

from modelplane.registry.audit import AuditLog
from modelplane.registry.conversions import ConversionService
from modelplane.registry.deployments import DeploymentStore
from modelplane.registry.keys import KeyStore
from modelplane.registry.nodes import NodeStore
from modelplane.registry.service import RegistryService
from modelplane.scheduler.controller import Controller
from modelplane.scheduler.leader import Leadership
from modelplane.security.blobkeys import BlobKeys
from modelplane.security.detection import AttackDetector
from modelplane.security.limiter import Quotas
from modelplane.serving.gateway import Gateway
from modelplane.settings import Settings
from modelplane.telemetry.audit import AuditTrail
from modelplane.telemetry.metrics import Metrics


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    registry: RegistryService
    deployments: DeploymentStore
    keys: KeyStore
    controller: Controller
    conversions: ConversionService
    gateway: Gateway
    metrics: Metrics
    nodes: NodeStore
    audit: AuditTrail  # record here (batched, off the hot path)
    audit_log: AuditLog  # read here
    blob_keys: BlobKeys | None = None  # the master key's data keys (encryption at rest)
    detector: AttackDetector | None = None  # attack detection (HTTP and gRPC share it)
    quotas: Quotas | None = None  # keys' rate, concurrency and daily limits (HTTP and gRPC)
    leadership: Leadership | None = None  # which server runs the controller
