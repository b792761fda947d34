"""The local executor: each replica is a subprocess on this machine, reached over a Unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import psutil

from modelplane.cluster.executor import ReplicaSpec, after_probe
from modelplane.domain import Node, Replica, ReplicaState, Resources
from modelplane.serving.replica_client import probe
from modelplane.settings import Settings

MAX_SOCKET_PATH = 100


def replica_arguments(settings: Settings, spec: ReplicaSpec, log_file: Path) -> list[str]:
    """The replica process's arguments, less where it listens."""
    serving = settings.serving
    arguments = [
        "--name", spec.deployment,
        "--version", str(spec.version),
        "--artifact", str(spec.artifact),
        "--digest", spec.digest,
        "--threads", str(serving.intra_op_threads),
        "--max-elements", str(serving.max_tensor_elements),
        "--max-batch-size", str(spec.config.max_batch_size),
        "--max-queue-delay-ms", str(spec.config.max_queue_delay_ms),
        "--log-file", str(log_file),
        "--replica-id", spec.replica_id,
        "--drain-timeout-s", str(settings.scheduler.drain_timeout_s),
    ]  # fmt: skip
    if not settings.telemetry.request_log:
        arguments.append("--no-request-log")
    if spec.config.payload_log_rate > 0:
        arguments += ["--payload-log-rate", str(spec.config.payload_log_rate)]
    if spec.config.input_guard != "off" and spec.input_stats:
        arguments += ["--input-guard", spec.config.input_guard,
                      "--input-guard-sigmas", str(spec.config.input_guard_sigmas),
                      "--input-stats", json.dumps(spec.input_stats)]  # fmt: skip
    for size in spec.config.preferred_batch_sizes:
        arguments += ["--preferred-batch-size", str(size)]
    return arguments


def replica_environment(
    token: str, digest: str, artifact_keys: Callable[[str], bytes | None] | None
) -> dict[str, str]:
    """A replica's environment: this one's, less the master key, plus the replica's secrets
    (its token and the data key of its own artifact only)."""
    env = {k: v for k, v in os.environ.items() if k != "MODELPLANE_MASTER_KEY"}
    env["MODELPLANE_REPLICA_TOKEN"] = token
    env["MODELPLANE_REPLICA_PARENT_PID"] = str(os.getpid())  # known before the replica starts
    key = artifact_keys(digest) if artifact_keys is not None else None
    if key is not None:
        env["MODELPLANE_REPLICA_ARTIFACT_KEY"] = key.hex()
    return env


def local_node(settings: Settings) -> Node:
    """This machine as the one node: all cores and 90% of RAM unless the settings say less."""
    scheduler = settings.scheduler
    cpus = scheduler.node_cpus or float(psutil.cpu_count() or 1)
    memory = scheduler.node_memory_mb or int(psutil.virtual_memory().total * 0.9 / 2**20)
    return Node(
        id=socket.gethostname() or "local",
        capacity=Resources(cpu=cpus, memory_mb=memory),
        labels={"zone": "local", "instance_type": "local"},
        cost_per_hour=scheduler.node_cost_per_hour,
        address="127.0.0.1",
    )


@dataclass(slots=True)
class _Process:
    replica: Replica
    proc: subprocess.Popen[bytes]
    socket: Path
    log: IO[bytes]
    failures: int = 0


class LocalExecutor:
    def __init__(
        self,
        settings: Settings,
        artifact_keys: Callable[[str], bytes | None] | None = None,
        token: str | None = None,
    ) -> None:
        """``token``: the replica token every server of the installation shares (default: a
        new one, this server's own)."""
        self._settings = settings
        self._artifact_keys = artifact_keys  # a sealed artifact's data key, by digest
        self._token = token or secrets.token_urlsafe(24)
        self._procs: dict[str, _Process] = {}
        run_dir = settings.home / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        if len(str(run_dir)) > MAX_SOCKET_PATH - 20:
            run_dir = Path(tempfile.mkdtemp(prefix="mp-"))
        self._run_dir = run_dir
        self._node = local_node(settings)

    @property
    def token(self) -> str:
        return self._token

    @property
    def replica_tls(self) -> None:
        return None  # Unix sockets, 0600 in a 0700 folder, and the token

    def log_path(self, deployment: str, replica_id: str) -> Path:
        return self._settings.log_dir / deployment / f"{replica_id}.log"

    def output_path(self, deployment: str, replica_id: str) -> Path:
        """Raw stdout/stderr of the process (what it prints before its JSON logging starts)."""
        return self._settings.log_dir / deployment / f"{replica_id}.out"

    async def start(self, spec: ReplicaSpec) -> Replica:
        socket = self._run_dir / f"{spec.replica_id}.sock"
        socket.unlink(missing_ok=True)
        log_path = self.output_path(spec.deployment, spec.replica_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("ab")
        log_file = self.log_path(spec.deployment, spec.replica_id)
        command = [
            sys.executable, "-m", "modelplane.serving.replica", "--uds", str(socket),
            *replica_arguments(self._settings, spec, log_file),
        ]  # fmt: skip
        env = replica_environment(self._token, spec.digest, self._artifact_keys)
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        replica = Replica(
            id=spec.replica_id,
            deployment=spec.deployment,
            model=spec.model,
            version=spec.version,
            url=f"unix:{socket}",
            state=ReplicaState.STARTING,
            started_at=time.time(),
            pid=proc.pid,
            revision=spec.revision,
            node=self._node.id,
            resources=spec.resources,
        )
        self._procs[spec.replica_id] = _Process(replica, proc, socket, log)
        return replica

    async def stop(self, replica_id: str) -> None:
        entry = self._procs.pop(replica_id, None)
        if entry is None:
            return
        entry.proc.terminate()
        try:
            await asyncio.to_thread(entry.proc.wait, 5.0)
        except subprocess.TimeoutExpired:
            entry.proc.kill()
            await asyncio.to_thread(entry.proc.wait)
        entry.log.close()
        entry.socket.unlink(missing_ok=True)

    async def _probe(self, entry: _Process) -> bool:
        if not entry.socket.exists():
            return False
        return await probe(
            entry.replica.url, self._token, self._settings.scheduler.health_timeout_s
        )

    async def _check(self, entry: _Process) -> Replica:
        replica = entry.replica
        if replica.state == ReplicaState.FAILED:
            return replica
        code = entry.proc.poll()
        if code is not None:
            return replace(replica, state=ReplicaState.FAILED, message=self._exit_message(entry))
        healthy = await self._probe(entry)
        checked, entry.failures = after_probe(replica, healthy, entry.failures, self._settings)
        if checked.state == ReplicaState.FAILED:
            entry.proc.kill()  # never became ready
        return checked

    def _exit_message(self, entry: _Process) -> str:
        code = entry.proc.returncode
        tail = ""
        try:
            with self.output_path(entry.replica.deployment, entry.replica.id).open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 400))
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
                tail = lines[-1] if lines else ""
        except OSError:
            pass
        return f"exited with code {code}" + (f": {tail}" if tail else "")

    async def observe(self) -> list[Replica]:
        entries = list(self._procs.values())
        checked = await asyncio.gather(*(self._check(e) for e in entries))
        for entry, replica in zip(entries, checked, strict=True):
            entry.replica = replica
        return list(checked)

    async def nodes(self) -> list[Node]:
        return [self._node]

    outlives_server = False  # children of this process, on this machine

    async def release(self) -> None:
        await self.shutdown()  # its replicas are this process's children: they go with it

    async def shutdown(self) -> None:
        await asyncio.gather(*(self.stop(rid) for rid in list(self._procs)))
