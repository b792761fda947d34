"""Executors: the only code that starts and stops replicas."""

from modelplane.cluster.executor import ReplicaExecutor, ReplicaSpec

__all__ = ["ReplicaExecutor", "ReplicaSpec"]
