"""Acceptance 7 as a user runs it: a real ``modelplane serve``, wrong keys from one real source
address (the client socket bound to 127.0.0.2, on REST and gRPC), and the input guard set
with the real CLI (``push --samples``, ``deploy --input-guard``)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from modelplane.protocol.grpc import grpc_predict_v2_pb2 as pb
from modelplane.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from modelplane.testing import IRIS_REQUEST, wait_for

from .conftest import Server

pytestmark = pytest.mark.e2e
ATTACKER = "127.0.0.2"  # Linux loopback answers all of 127/8: a second real source address


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


@contextmanager
def from_address(address: str, port: int) -> Iterator[int]:
    """A local TCP relay whose connections to ``127.0.0.1:port`` leave from ``address`` (gRPC's
    Python client cannot bind its socket); yields the relay's port."""
    listener = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = [listener]

    def accept() -> None:
        with suppress(OSError):
            while True:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", port),
                                                    source_address=(address, 0))  # fmt: skip
                conns.extend((client, upstream))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        for conn in conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


def _grpc_error(port: int, key: str) -> grpc.RpcError:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated
        auth = (("authorization", f"Bearer {key}"),)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=auth, timeout=10)
    return caught.value


def test_wrong_keys_from_one_address_block_it_on_rest_and_grpc(server_factory) -> None:
    server: Server = server_factory()
    server.start()
    attacker = httpx.Client(base_url=server.url, timeout=10,
                            transport=httpx.HTTPTransport(local_address=ATTACKER))  # fmt: skip
    with attacker:
        wrong = {"Authorization": "Bearer mpk_0123abcd_notthesecret"}
        codes = [attacker.get("/api/v1/models", headers=wrong).status_code for _ in range(30)]
        assert codes[:20] == [401] * 20, codes
        assert set(codes[20:]) == {429}, codes
        refused = attacker.get("/api/v1/models")  # no key
        assert refused.status_code == 429
        assert f"source address {ATTACKER} is blocked until" in refused.json()["error"]
        assert 250 < int(refused.headers["retry-after"]) <= 300
        # a good key from the same address (a shared NAT, a proxy) is not locked out
        assert attacker.get("/api/v1/models", headers=server.auth).status_code == 200
    with from_address(ATTACKER, server.grpc_port) as relay:
        error = _grpc_error(relay, "mpk_0123abcd_notthesecret")
        with grpc.insecure_channel(f"127.0.0.1:{relay}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated
            auth = (("authorization", f"Bearer {server.key}"),)
            assert stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=auth).name
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert f"source address {ATTACKER} is blocked" in (error.details() or "")
    trailing = dict(error.trailing_metadata() or ())
    assert 250 < int(trailing["retry-after"]) <= 300

    # the other address, with a good key, is served on both surfaces
    assert httpx.get(f"{server.url}/api/v1/models", headers=server.auth).status_code == 200
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated
        auth = (("authorization", f"Bearer {server.key}"),)
        meta = stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=auth)
        assert meta.name == "modelplane"
    metrics = httpx.get(f"{server.url}/metrics", headers=server.auth).text
    assert 'modelplane_attacks_detected_total{detector="auth_failures"} 1.0' in metrics
    assert 'modelplane_attack_refused_requests_total{detector="auth_failures"} 12.0' in metrics

    def detections() -> list[dict[str, str]]:
        shown = server.cli("audit", "--json", "--action", "detect.auth_failures")
        assert shown.returncode == 0, shown.stderr
        return [json.loads(line) for line in shown.stdout.splitlines()]

    wait_for(lambda: len(detections()) == 1, timeout=10)
    (entry,) = detections()
    assert (entry["source"], entry["result"]) == (ATTACKER, "blocked")
    assert "20 failed authentications" in entry["detail"]


def _infer(server: Server, name: str, value: float) -> httpx.Response:
    tensor = {**IRIS_REQUEST["inputs"][0], "data": [value, 3.0, 4.0, 1.0]}
    request = {**IRIS_REQUEST, "inputs": [tensor]}
    return httpx.post(f"{server.url}/v2/models/{name}/infer", json=request, headers=server.auth,
                      timeout=30)  # fmt: skip


def test_the_input_guard_logs_flags_or_rejects_per_deployment(
    server_factory, iris_file: Path, tmp_path: Path
) -> None:
    server: Server = server_factory()
    server.start()
    rng = np.random.default_rng(0)
    samples = rng.normal([5.8, 3.0, 4.3, 1.2], [0.8, 0.4, 1.7, 0.7], (64, 4)).astype(np.float32)
    path = tmp_path / "samples.npz"
    np.savez(path, float_input=samples)
    server.push(iris_file, "g", "--samples", str(path))
    for action in ("reject", "flag", "log"):
        made = server.cli("deploy", "g", "--name", f"g-{action}", "--input-guard", action)
        assert made.returncode == 0, made.stderr
    far = float(samples[:, 0].max() + 50 * samples[:, 0].std())

    for action in ("reject", "flag", "log"):
        normal = _infer(server, f"g-{action}", 5.8)
        assert normal.status_code == 200, normal.text
        assert "modelplane-input-outlier" not in normal.headers
    rejected = _infer(server, "g-reject", far)
    assert rejected.status_code == 422, rejected.text
    assert rejected.json()["code"] == "input_outlier"
    assert "float_input" in rejected.json()["error"]
    flagged = _infer(server, "g-flag", far)
    assert flagged.status_code == 200, flagged.text
    assert "float_input" in flagged.headers["modelplane-input-outlier"]
    logged = _infer(server, "g-log", far)
    assert logged.status_code == 200, logged.text
    assert "modelplane-input-outlier" not in logged.headers

    def warned() -> bool:
        shown = server.cli("deployments", "logs", "g-log", "--level", "warning")
        assert shown.returncode == 0, shown.stderr
        return "float_input" in shown.stdout and "WARNING" in shown.stdout.upper()

    wait_for(warned, timeout=20, interval=0.5)
