"""Faults of one replica under steady load, each with its measured bound: what a client sees
(requests sent, failed, and the window in which failures happened) and how long until the
deployment is whole again. The bounds are written in docs/operations.md."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.e2e.conftest import Server

from modelplane.testing import IRIS_REQUEST, wait_for

pytestmark = pytest.mark.e2e


@dataclass
class Load:
    """Steady requests from a few threads; every answer is recorded with its time."""

    server: Server
    workers: int = 4
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
                time.sleep(0.01)

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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    # a hung replica's requests give up after 2 s; probes every 0.5 s, 2 s each
    server = Server(tmp_path / "home", {"MODELPLANE_SERVING__REQUEST_TIMEOUT_S": "2",
                                        "MODELPLANE_SCHEDULER__RECONCILE_INTERVAL_S": "0.5",
                                        "MODELPLANE_SCHEDULER__HEALTH_TIMEOUT_S": "2"})  # fmt: skip
    try:
        server.start()
        yield server
    finally:
        server.stop()


def pids(server: Server) -> list[int]:
    replicas: list[dict[str, Any]] = server.deployment("iris")["replicas"]  # type: ignore[assignment]
    return [int(r["pid"]) for r in replicas if r["state"] == "ready"]


def whole_without(server: Server, victim: int) -> bool:
    now = pids(server)
    return len(now) == 2 and victim not in now


def test_a_hung_replica_is_timed_out_marked_unhealthy_and_replaced(server, iris_file) -> None:
    server.push(iris_file)
    assert server.cli("deploy", "iris", "--replicas", "2").returncode == 0
    wait_for(lambda: len(pids(server)) == 2, timeout=60)
    victim = pids(server)[0]
    with Load(server) as load:
        time.sleep(1)
        os.kill(victim, signal.SIGSTOP)  # answers nothing from now on, but is not gone
        hung = time.monotonic()
        try:
            wait_for(lambda: whole_without(server, victim), timeout=60)
            replaced_s = time.monotonic() - hung
            time.sleep(1)
        finally:
            if _alive(victim):
                os.kill(victim, signal.SIGKILL)
    print(f"hung replica: sent {load.sent}, failed {len(load.failures)} "
          f"({sorted({s for _, s in load.failures})}), failure window {load.window_s:.1f} s, "
          f"whole again after {replaced_s:.1f} s")  # fmt: skip
    # the bounds of docs/operations.md: until the probes (3 x (2 s timeout + 0.5 s period))
    # take the hung replica out of the routes, requests sent to it time out (504, after the 2 s
    # request timeout), one or two per client connection; none fails any other way, and the
    # deployment is whole again within the detection time and one replica start
    assert load.sent > 100
    assert 1 <= len(load.failures) <= load.workers * 4
    assert all(status == 504 for _, status in load.failures)
    assert load.window_s <= 15.0
    assert replaced_s <= 25.0


def _alive(pid: int) -> bool:
    """Running, not exited-and-waiting-to-be-reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
