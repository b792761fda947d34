"""The local executor: each replica is a subprocess on this machine, reached over a Unix socket."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from modelplane.cluster.executor import ReplicaSpec
from modelplane.domain import Replica, ReplicaState
from modelplane.serving.replica_client import probe
from modelplane.settings import Settings

UNHEALTHY_AFTER = 3  # failed probes in a row before a ready replica counts as unhealthy
MAX_SOCKET_PATH = 100


@dataclass(slots=True)
class _Process:
    replica: Replica
    proc: subprocess.Popen[bytes]
    socket: Path
    log: IO[bytes]
    failures: int = 0


class LocalExecutor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._token = secrets.token_urlsafe(24)
        self._procs: dict[str, _Process] = {}
        run_dir = settings.home / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        if len(str(run_dir)) > MAX_SOCKET_PATH - 20:
            run_dir = Path(tempfile.mkdtemp(prefix="mp-"))
        self._run_dir = run_dir

    @property
    def token(self) -> str:
        return self._token

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
        serving = self._settings.serving
        command = [
            sys.executable, "-m", "modelplane.serving.replica",
            "--name", spec.deployment,
            "--version", str(spec.version),
            "--artifact", str(spec.artifact),
            "--digest", spec.digest,
            "--uds", str(socket),
            "--threads", str(serving.intra_op_threads),
            "--max-elements", str(serving.max_tensor_elements),
            "--max-batch-size", str(spec.config.max_batch_size),
            "--max-queue-delay-ms", str(spec.config.max_queue_delay_ms),
            "--log-file", str(self.log_path(spec.deployment, spec.replica_id)),
            "--replica-id", spec.replica_id,
        ]  # fmt: skip
        if not self._settings.telemetry.request_log:
            command.append("--no-request-log")
        if spec.config.payload_log_rate > 0:
            command += ["--payload-log-rate", str(spec.config.payload_log_rate)]
        for size in spec.config.preferred_batch_sizes:
            command += ["--preferred-batch-size", str(size)]
        env = {**os.environ, "MODELPLANE_REPLICA_TOKEN": self._token}
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
        return await probe(entry.replica.url, self._token)

    async def _check(self, entry: _Process) -> Replica:
        replica = entry.replica
        if replica.state == ReplicaState.FAILED:
            return replica
        code = entry.proc.poll()
        if code is not None:
            return replace(replica, state=ReplicaState.FAILED, message=self._exit_message(entry))
        healthy = await self._probe(entry)
        if healthy:
            entry.failures = 0
            return replace(replica, state=ReplicaState.READY, message="")
        if replica.state == ReplicaState.STARTING:
            waited = time.time() - replica.started_at
            if waited > self._settings.serving.replica_start_timeout_s:
                entry.proc.kill()
                return replace(
                    replica,
                    state=ReplicaState.FAILED,
                    message=f"not ready after {waited:.0f}s; killed",
                )
            return replica
        entry.failures += 1
        if entry.failures >= UNHEALTHY_AFTER:
            return replace(replica, state=ReplicaState.UNHEALTHY, message="health checks failing")
        return replica

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

    async def shutdown(self) -> None:
        await asyncio.gather(*(self.stop(rid) for rid in list(self._procs)))
