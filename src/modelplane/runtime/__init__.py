"""Runtimes: what loads a model and runs it."""

from modelplane.runtime.base import Runtime

__all__ = ["Runtime"]
