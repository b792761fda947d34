"""Real processes: ``modelplane serve`` on a free port, the real CLI, readiness by polling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from modelplane.testing import RayCluster, free_port, wait_for

if TYPE_CHECKING:
    import openai
from modelplane.testing import ray_cluster as start_ray_cluster

BIN = Path(sys.executable).parent


@dataclass
class Server:
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key(self) -> str:
        return (self.home / "admin.key").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
        # the tests check behaviour, not this 2-core machine's capacity: offer replicas 32 CPUs
        # unless a test says otherwise (the capacity tests do), and give health probes 5 s, as
        # load tests saturate both cores (a crash is seen at once either way: the process exits)
        return {**env, "MODELPLANE_HOME": str(self.home), "MODELPLANE_URL": self.url,
                "MODELPLANE_SCHEDULER__NODE_CPUS": "32",
                "MODELPLANE_SCHEDULER__HEALTH_TIMEOUT_S": "5", **self.env}  # fmt: skip

    def start(self, *args: str, timeout: float = 120) -> None:
        with (self.home.parent / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "modelplane"), "serve", "--port", str(self.port),
                 "--grpc-port", str(self.grpc_port), *args],
                env=self._env(), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(self.ready, timeout=timeout)

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.home.parent / "serve.log").read_text()[-3000:]
            raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{log}")
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # never left running for the next tests
                self.proc.wait()
                raise
        self.proc = None

    def cli(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "modelplane"), *args],
            env={**self._env(), "COLUMNS": "200", **(env or {})}, input=stdin,
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip

    def push(self, path: Path, name: str = "iris", *extra: str) -> None:
        result = self.cli("push", str(path), "--name", name, *extra)
        assert result.returncode == 0, result.stderr

    def deployment(self, name: str) -> dict[str, object]:
        response = httpx.get(f"{self.url}/api/v1/deployments/{name}", headers=self.auth, timeout=30)
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type[Server]]:
    servers: list[Server] = []

    def make(**env: str) -> Server:
        server = Server(tmp_path / f"home{len(servers)}", env)
        servers.append(server)
        return server

    yield make  # type: ignore[misc]
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the read-mostly tests of a module (saves the start-up time)."""
    home = tmp_path_factory.mktemp("shared") / "home"
    server = Server(home, {"MODELPLANE_SERVING__MAX_REQUEST_BYTES": "65536"})
    try:
        server.start()
        yield server
    finally:
        server.stop()


OpenAIClients = Callable[[str, str], "openai.OpenAI"]


@pytest.fixture
def openai_clients() -> Iterator[OpenAIClients]:
    """Official ``openai`` clients for a server URL and a key, closed after the test."""
    import openai

    made: list[openai.OpenAI] = []

    def make(url: str, key: str) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    """A real two-node Ray cluster on loopback, stopped by process id afterwards."""
    with start_ray_cluster(2) as cluster:
        yield cluster
