"""What the scheduler reasons about: resources, nodes, placement constraints, autoscaling bounds."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of compute: what a node has or what one replica asks for."""

    cpu: float = 0.0
    memory_mb: int = 0
    gpus: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory_mb + other.memory_mb,
                         self.gpus + other.gpus)  # fmt: skip

    def describe(self) -> str:
        parts = [f"{self.cpu:g} CPU", f"{self.memory_mb} MB"]
        if self.gpus:
            parts.append(f"{self.gpus} GPU")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, float | int]:
        return {"cpu": self.cpu, "memory_mb": self.memory_mb, "gpus": self.gpus}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], default: Resources | None = None) -> Resources:
        base = default or cls()
        return cls(
            cpu=float(data.get("cpu", base.cpu)),
            memory_mb=int(data.get("memory_mb", base.memory_mb)),
            gpus=int(data.get("gpus", base.gpus)),
        )


# What one replica asks for when the deployment does not say. A reservation is for placement,
# not a cap: an ONNX Runtime replica with one intra-op thread uses up to about half a core
# under steady load, nearly nothing idle, and well under 512 MB for most models. A quarter core
# lets a 2-core laptop hold eight such replicas (a demo, a few models, a rolling update's
# extra replica); deployments that are busy all the time should ask for more (--cpu 1).
DEFAULT_REQUEST = Resources(cpu=0.25, memory_mb=512)
GENERATION_OVERHEAD_MB = 300  # a language model replica's process: Python, ONNX Runtime, buffers


def generation_memory_mb(report: Mapping[str, Any] | None, slots: int) -> int | None:
    """What a language model's replica needs: its weights, plus a KV cache row of the full
    context for each of ``slots`` streams, plus the process. None for other models (their
    conversion report has no ``memory``)."""
    memory = (report or {}).get("memory")
    if not isinstance(memory, Mapping):
        return None
    cache = slots * int(memory["context_length"]) * int(memory["kv_bytes_per_token"])
    need = int(memory["weights_bytes"]) + cache
    return -(-need // (1 << 20)) + GENERATION_OVERHEAD_MB


class NodeState(enum.StrEnum):
    HEALTHY = "healthy"
    CORDONED = "cordoned"  # healthy, but takes no new replicas
    DRAINING = "draining"  # cordoned, and its replicas move elsewhere (start new, then drain)
    LOST = "lost"  # not reachable: its replicas are placed elsewhere


@dataclass(frozen=True, slots=True)
class Node:
    """A machine replicas can run on, with what it costs and where it is."""

    id: str
    capacity: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    cost_per_hour: float = 0.0
    state: NodeState = NodeState.HEALTHY
    gpu_type: str = ""
    address: str = ""

    @property
    def zone(self) -> str:
        return self.labels.get("zone", "")

    @property
    def instance_type(self) -> str:
        return self.labels.get("instance_type", "")


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    """Where a deployment's replicas may go and how candidate nodes are weighed.

    ``node_labels``: labels a node must carry (``{"instance_type": "m5.xlarge"}``). ``zones``:
    the zones replicas may run in (empty: any). ``gpu_type``: the GPU type a node must have when
    the replica asks for GPUs. ``spread_zones``: spread replicas over zones as well as nodes.
    The weights trade cost against spreading and packing (0 turns one off).
    """

    node_labels: Mapping[str, str] = field(default_factory=dict)
    zones: tuple[str, ...] = ()
    gpu_type: str = ""
    spread_zones: bool = True
    cost_weight: float = 1.0
    spread_weight: float = 1.0
    pack_weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_labels": dict(self.node_labels),
            "zones": list(self.zones),
            "gpu_type": self.gpu_type,
            "spread_zones": self.spread_zones,
            "cost_weight": self.cost_weight,
            "spread_weight": self.spread_weight,
            "pack_weight": self.pack_weight,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlacementPolicy:
        d = cls()
        return cls(
            node_labels={str(k): str(v) for k, v in (data.get("node_labels") or {}).items()},
            zones=tuple(str(z) for z in data.get("zones") or ()),
            gpu_type=str(data.get("gpu_type", d.gpu_type)),
            spread_zones=bool(data.get("spread_zones", d.spread_zones)),
            cost_weight=float(data.get("cost_weight", d.cost_weight)),
            spread_weight=float(data.get("spread_weight", d.spread_weight)),
            pack_weight=float(data.get("pack_weight", d.pack_weight)),
        )


@dataclass(frozen=True, slots=True)
class Autoscaling:
    """Replica bounds and the load each replica should carry.

    ``target_ongoing_requests``: requests in flight per replica to aim for.
    ``target_latency_ms``: optional; p99-ish latency above it also asks for more replicas.
    ``upscale_delay_s`` / ``downscale_delay_s``: how long the need must last before acting.
    ``cold_start_timeout_s``: how long the gateway holds requests while a scaled-to-zero
    deployment starts its first replica.
    """

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0
    target_latency_ms: float | None = None
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0
    cold_start_timeout_s: float = 60.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "target_latency_ms": self.target_latency_ms,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "cold_start_timeout_s": self.cold_start_timeout_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Autoscaling:
        d = cls()
        latency = data.get("target_latency_ms")
        return cls(
            min_replicas=int(data.get("min_replicas", d.min_replicas)),
            max_replicas=int(data.get("max_replicas", d.max_replicas)),
            target_ongoing_requests=float(
                data.get("target_ongoing_requests", d.target_ongoing_requests)
            ),
            target_latency_ms=None if latency is None else float(latency),
            upscale_delay_s=float(data.get("upscale_delay_s", d.upscale_delay_s)),
            downscale_delay_s=float(data.get("downscale_delay_s", d.downscale_delay_s)),
            cold_start_timeout_s=float(data.get("cold_start_timeout_s", d.cold_start_timeout_s)),
        )
