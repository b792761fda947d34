"""Acceptance: a key revoked while a client hammers with it is refused within 5 s, over HTTP
(401) and gRPC (UNAUTHENTICATED); the key commands of the CLI, as a user runs them."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest

from modelplane.protocol.grpc import grpc_predict_v2_pb2 as pb
from modelplane.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from modelplane.testing import IRIS_REQUEST

pytestmark = pytest.mark.e2e


class Hammer(threading.Thread):
    """Calls as fast as it can; notes when it first sees the refusal."""

    def __init__(self, call: object) -> None:
        super().__init__(daemon=True)
        self._call = call
        self.ok = 0
        self.refused_at: float | None = None
        self.stop = False

    def run(self) -> None:
        while not self.stop and self.refused_at is None:
            if self._call():  # type: ignore[operator]
                self.ok += 1
            else:
                self.refused_at = time.monotonic()


def test_a_key_revoked_under_load_is_refused_within_5_s(server_factory, iris_file: Path) -> None:
    server = server_factory()
    server.start()
    server.push(iris_file, "fraud-iris")
    assert server.cli("deploy", "fraud-iris").returncode == 0
    made = server.cli("keys", "create", "--name", "app", "--role", "invoker", "--models",
                      "fraud-*", "--expires", "30d", "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    secret = key["secret"]
    listed = server.cli("keys", "list")
    assert key["id"] in listed.stdout
    assert secret not in listed.stdout

    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"})

    def rest() -> bool:
        response = http.post("/v2/models/fraud-iris/infer", json=IRIS_REQUEST)
        assert response.status_code in (200, 401), response.text
        return response.status_code == 200

    unexpected: list[grpc.RpcError] = []
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated
    request = pb.ModelInferRequest(model_name="fraud-iris")
    tensor = request.inputs.add(name="float_input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])

    def rpc() -> bool:
        try:
            stub.ModelInfer(request, metadata=(("authorization", f"Bearer {secret}"),), timeout=10)
        except grpc.RpcError as exc:
            unexpected.extend([] if exc.code() == grpc.StatusCode.UNAUTHENTICATED else [exc])
            return False
        return True

    hammers = [Hammer(rest), Hammer(rpc)]
    try:
        for hammer in hammers:
            hammer.start()
        time.sleep(1.0)  # both under way
        assert all(h.ok > 0 and h.refused_at is None for h in hammers)
        revoked = server.cli("keys", "revoke", key["id"])
        assert revoked.returncode == 0, revoked.stderr
        revoked_at = time.monotonic()
        for hammer in hammers:
            hammer.join(timeout=10)
        for hammer in hammers:
            assert hammer.refused_at is not None
            assert hammer.refused_at - revoked_at < 5.0
    finally:
        for hammer in hammers:
            hammer.stop = True
        http.close()
        channel.close()
    assert not unexpected
    assert "revoked" in server.cli("keys", "list").stdout


def test_rotate_and_update_from_the_cli(server_factory) -> None:
    server = server_factory()
    server.start()
    made = json.loads(server.cli("keys", "create", "--name", "ci", "--role", "viewer",
                                 "--json").stdout)  # fmt: skip
    rotated = server.cli("keys", "rotate", made["id"], "--grace", "1h", "--json")
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)["secret"]
    for secret in (made["secret"], new):  # both work during the grace period
        response = httpx.get(
            f"{server.url}/api/v1/models", headers={"Authorization": f"Bearer {secret}"}
        )
        assert response.status_code == 200
    updated = server.cli("keys", "update", made["id"], "--role", "invoker", "--models", "a,b*")
    assert updated.returncode == 0, updated.stderr
    assert "invoker" in updated.stdout
    assert "a, b*" in updated.stdout
    wrong = server.cli("keys", "create", "--name", "x", "--role", "root")
    assert wrong.returncode != 0


def test_the_cli_refuses_to_remove_the_last_admin_key(server_factory) -> None:
    server = server_factory()
    server.start()
    admin_id = server.key.split("_")[1]
    for command in (("revoke", admin_id), ("update", admin_id, "--role", "viewer"),
                    ("update", admin_id, "--expires", "1d")):  # fmt: skip
        refused = server.cli("keys", *command)
        assert refused.returncode == 5, refused.stdout  # conflict
        assert "last active admin key; create another admin key first" in refused.stderr
        assert "Traceback" not in refused.stderr
    made = server.cli("keys", "create", "--name", "next", "--role", "admin", "--json")
    other = json.loads(made.stdout)
    revoked = server.cli("keys", "revoke", admin_id, env={"MODELPLANE_API_KEY": other["secret"]})
    assert revoked.returncode == 0, revoked.stderr
