"""The S3 endpoint goes away for 10 s (a TCP proxy in front of moto's server is shut): a push
during the outage fails cleanly (a clear error, no version, nothing visible in the bucket) and
the same push succeeds once the endpoint is back; a replica that must fetch its artifact during
the outage starts once it is back, by itself. Bounds in docs/operations.md."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnx
import pytest
from tests.e2e.conftest import Server

from modelplane.testing import IRIS_REQUEST, free_port, wait_for

pytestmark = pytest.mark.e2e


class Proxy:
    """Forwards 127.0.0.1:port to a target port; ``down()`` closes every connection and refuses
    new ones until ``up()``."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self._target = target
        self._up = threading.Event()
        self._up.set()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed: the proxy is done
            if not self._up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        self._up.clear()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def up(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._stop.set()
        self.down()
        self._listener.close()


@pytest.fixture
def proxy(s3) -> Iterator[Proxy]:
    proxy = Proxy(s3.port)
    yield proxy
    proxy.close()


def test_the_store_away_for_10_s(s3, postgres, proxy: Proxy, tmp_path: Path, iris_file) -> None:
    bucket = s3.bucket(f"models-{uuid.uuid4().hex[:8]}")
    env = {**s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
           "AWS_MAX_ATTEMPTS": "2",  # boto3's own retries, kept short for the test
           "MODELPLANE_DATABASE_URL": postgres.database(),
           "MODELPLANE_STORAGE_URL": f"s3://{bucket}/prod",
           "MODELPLANE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
           "MODELPLANE_SCHEDULER__RECONCILE_INTERVAL_S": "0.5"}  # fmt: skip
    server = Server(tmp_path / "home", env)
    model = onnx.load_from_string(iris_file.read_bytes())
    onnx.helper.set_model_props(model, {"build": "2"})
    second = tmp_path / "iris2.onnx"
    second.write_bytes(model.SerializeToString())
    try:
        server.start()
        server.push(iris_file)
        listed = s3.client().list_objects_v2(Bucket=bucket)["Contents"]

        proxy.down()
        down = time.monotonic()
        failed = server.cli("push", str(second), "--name", "iris")
        assert failed.returncode != 0
        assert "artifact store" in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr
        # a deploy now needs the artifact fetched for its replica: it waits for the store
        assert server.cli("deploy", "iris:1", "--no-wait").returncode == 0
        time.sleep(max(0.0, 10 - (time.monotonic() - down)))
        assert s3.client().list_objects_v2(Bucket=bucket)["Contents"] == listed  # nothing new
        versions = httpx.get(f"{server.url}/api/v1/models/iris", headers=server.auth).json()
        assert [v["version"] for v in versions["versions"]] == [1]
        proxy.up()
        back = time.monotonic()

        server.push(second, "iris")  # the same push again: it succeeds
        wait_for(lambda: server.deployment("iris")["ready_replicas"] == 1, timeout=60)
        started_s = time.monotonic() - back
        reply = httpx.post(f"{server.url}/v2/models/iris/infer", json=IRIS_REQUEST,
                           headers=server.auth, timeout=10)  # fmt: skip
        assert reply.json()["outputs"][0]["data"] == [0]
        print(f"store away 10 s: the push failed cleanly; the replica started {started_s:.1f} s "
              "after the store was back")  # fmt: skip
        assert started_s <= 30.0
    finally:
        server.stop()
