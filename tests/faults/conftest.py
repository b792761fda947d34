"""What every fault test uses: steady load that records each failure with its time."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx
from tests.e2e.conftest import Server

from modelplane.testing import IRIS_REQUEST


@dataclass
class Load:
    """Steady requests from a few threads; every answer is recorded with its time."""

    server: Server
    workers: int = 4
    pause: float = 0.01  # seconds between a worker's requests
    sent: int = 0
    failures: list[tuple[float, int]] = field(default_factory=list)  # (time, status)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        with httpx.Client(headers=self.server.auth, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    status = client.post(f"{self.server.url}/v2/models/iris/infer",
                                         json=IRIS_REQUEST).status_code  # fmt: skip
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    self.sent += 1
                    if status != 200:
                        self.failures.append((time.monotonic(), status))
                time.sleep(self.pause)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run) for _ in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    @property
    def window_s(self) -> float:
        times = [t for t, _ in self.failures]
        return max(times) - min(times) if times else 0.0
