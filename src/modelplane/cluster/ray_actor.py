"""The Ray actor that holds one replica on the node placement chose.

It starts the ordinary replica process there (the same one the local executor runs), listening
on the node's address, and reports where it listens. The replica process exits by itself when
the actor's worker goes away, so killing the actor (or losing the node) leaves nothing behind.
Imported by Ray workers; imports ``ray`` only inside methods, so the package needs no Ray.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from modelplane.telemetry.logquery import LogReader

PORT_WAIT_S = 0.05
LOG_SUFFIXES = (".log", ".payloads.jsonl", ".out")


class ReplicaActor:
    def __init__(
        self,
        info: dict[str, Any],
        arguments: list[str],
        token: str,
        artifact: list[Any],
        cache_dir: str,
        tls: tuple[str, str],
        artifact_key: str = "",
        source: dict[str, str] | None = None,
    ) -> None:
        """``tls`` is the replica's certificate and key (PEM), issued by the server for it: the
        replica listens with TLS only. ``source``: the bucket the sealed artifact is fetched
        from (with this node's credentials) when this machine does not have it; otherwise the
        bytes are in ``artifact`` (Ray's object store)."""
        import ray

        self.info = info
        self.host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        arguments = list(arguments)
        path = Path(info["artifact"])
        if not path.exists():
            # another machine: the node fetches the bytes once, from the bucket or through Ray's
            # object store, into a cache by digest (the replica checks the digest as it loads)
            if source is not None:
                path = self._download(source, Path(cache_dir), info["digest"])
            else:
                path = self._fetch(ray.get(artifact[0]), Path(cache_dir), info["digest"])
            arguments[arguments.index("--artifact") + 1] = str(path)
        run_dir = self.run_dir = Path(tempfile.mkdtemp(prefix="mp-replica-"))
        self.port_file = run_dir / "port"
        # logs stay on this node, in the actor's own folder; the control plane collects them
        # (read_log) whether or not it shares a filesystem with this node
        log_file = run_dir / "replica.log"
        arguments[arguments.index("--log-file") + 1] = str(log_file)
        # what the control plane collects, by the suffix its copy gets
        self._reading = threading.Lock()  # the actor serves a few calls at once
        self._readers = {suffix: LogReader(run_dir / f"replica{suffix}") for suffix in LOG_SUFFIXES}
        self.output = (run_dir / "replica.out").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelplane.serving.replica", "--host", self.host,
             "--port", "0", "--port-file", str(self.port_file), *arguments],
            stdout=self.output, stderr=subprocess.STDOUT,
            env={**os.environ, "MODELPLANE_REPLICA_TOKEN": token,
                 "MODELPLANE_REPLICA_TLS_CERT": tls[0], "MODELPLANE_REPLICA_TLS_KEY": tls[1],
                 "MODELPLANE_REPLICA_ARTIFACT_KEY": artifact_key,
                 "MODELPLANE_REPLICA_PARENT_PID": str(os.getpid())},
        )  # fmt: skip

    @staticmethod
    def _download(source: dict[str, str], cache_dir: Path, digest: str) -> Path:
        """The sealed blob from the bucket, streamed to the cache (kept by digest)."""
        target = cache_dir / digest
        if target.exists():
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = target.with_suffix(f".{os.getpid()}.tmp")
        where = f"s3://{source['bucket']}/{source['key']}"
        try:
            import boto3

            client = boto3.client("s3", endpoint_url=source["endpoint"] or None,
                                  region_name=source["region"] or None)  # fmt: skip
            try:
                client.download_file(source["bucket"], source["key"], str(staging))
            finally:
                client.close()
            staging.replace(target)
        except Exception as exc:
            staging.unlink(missing_ok=True)
            raise RuntimeError(
                f"could not fetch the artifact from {where} ({type(exc).__name__}: {exc}); give "
                "this Ray node read access to the bucket (AWS_* variables or an instance role) "
                "and install modelplane[s3] there"
            ) from None
        return target

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
        return {**self.info, "url": self._url()}

    def _url(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            return f"tls://{self.host}:{int(self.port_file.read_text())}"
        return ""

    def address(self, timeout_s: float) -> str:
        """``tls://host:port`` once the replica listens; raises if it exits or takes too long."""
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

    def read_logs(self, limit: int = 4 << 20) -> dict[str, bytes]:
        """Complete lines written since the last call to each of the replica's logs (its JSON
        log, sampled payloads, raw output), by suffix; at most ``limit`` bytes each."""
        with self._reading:
            found = {suffix: reader.read(limit) for suffix, reader in self._readers.items()}
        return {suffix: data for suffix, data in found.items() if data}

    def poll(self) -> int | None:
        return self.proc.poll()

    def exit_message(self) -> str:
        return f"exited with code {self.proc.returncode}: {self._tail()}"

    def stop(self) -> dict[str, bytes]:
        """Stops the replica; returns the last of its logs (the folder holding them goes)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.output.close()
        last = self.read_logs(64 << 20)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return last
