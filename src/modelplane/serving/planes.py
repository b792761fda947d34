"""What every replica plane (tensors or generation) keeps: its name and version, whether it is
loaded, how long loading took, and its request counts."""

from __future__ import annotations

import time
from typing import Any, Protocol

from modelplane.telemetry.histogram import Histogram


class _Loads(Protocol):
    def load(self) -> None: ...


class PlaneState:
    def __init__(self, name: str, version: str, runtime: Any) -> None:
        self.name = name
        self.version = version
        self._runtime = runtime
        self.ready = False
        self.failure_count = 0
        self.load_seconds = 0.0
        self.request_seconds = Histogram()

    def load(self) -> None:
        started = time.perf_counter()
        loader: _Loads = self._runtime
        loader.load()
        self.load_seconds = time.perf_counter() - started
        self.ready = True
