"""The Ray actor that holds one replica on the node placement chose.

It starts the ordinary replica process there (the same one the local executor runs), listening
on the node's address, and reports where it listens. The replica process exits by itself when
the actor's worker goes away, so killing the actor (or losing the node) leaves nothing behind.
Imported by Ray workers; imports ``ray`` only inside methods, so the package needs no Ray.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PORT_WAIT_S = 0.05


class ReplicaActor:
    def __init__(
        self,
        info: dict[str, Any],
        arguments: list[str],
        token: str,
        artifact: list[Any],
        cache_dir: str,
    ) -> None:
        import ray

        self.info = info
        self.host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        arguments = list(arguments)
        path = Path(info["artifact"])
        if not path.exists():
            # another machine: the bytes come once through Ray's object store
            path = self._fetch(ray.get(artifact[0]), Path(cache_dir), info["digest"])
            arguments[arguments.index("--artifact") + 1] = str(path)
        run_dir = Path(tempfile.mkdtemp(prefix="mp-replica-"))
        self.port_file = run_dir / "port"
        log_file = Path(arguments[arguments.index("--log-file") + 1])
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.output = log_file.with_suffix(".out").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelplane.serving.replica", "--host", self.host,
             "--port", "0", "--port-file", str(self.port_file), *arguments],
            stdout=self.output, stderr=subprocess.STDOUT,
            env={**os.environ, "MODELPLANE_REPLICA_TOKEN": token},
        )  # fmt: skip

    @staticmethod
    def _fetch(data: bytes, cache_dir: Path, digest: str) -> Path:
        target = cache_dir / digest
        if not target.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            staging = target.with_suffix(f".{os.getpid()}.tmp")
            staging.write_bytes(data)
            staging.replace(target)
        return target

    def describe(self) -> dict[str, Any]:
        return {**self.info, "pid": self.proc.pid, "url": self._url(), "node_ip": self.host}

    def _url(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            return f"tcp://{self.host}:{int(self.port_file.read_text())}"
        return ""

    def address(self, timeout_s: float) -> str:
        """``tcp://host:port`` once the replica listens; raises if it exits or takes too long."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            url = self._url()
            if url:
                return url
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"replica exited with code {code}: {self._tail()}")
            time.sleep(PORT_WAIT_S)
        raise RuntimeError(f"replica did not listen within {timeout_s:g}s")

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            name = self.output.name
            lines = Path(name).read_bytes()[-400:].decode("utf-8", "replace").strip().splitlines()
            return lines[-1] if lines else ""
        return ""

    def poll(self) -> int | None:
        return self.proc.poll()

    def exit_message(self) -> str:
        return f"exited with code {self.proc.returncode}: {self._tail()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.output.close()
