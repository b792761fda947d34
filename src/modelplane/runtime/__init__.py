"""Runtimes: what loads a model and runs it."""

from modelplane.runtime.base import BatchStats, Runtime

__all__ = ["BatchStats", "Runtime"]
