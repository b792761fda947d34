"""Nothing a client sees carries a server path: conversion errors that pass on what a library
said, and a failed deployment's last failure and replica messages. The server log keeps them."""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
from collections.abc import AsyncIterator

import httpx
import pytest
from onnx import TensorProto, helper

from modelplane.cluster.executor import ReplicaSpec
from modelplane.domain import ModelRef, Node, Replica, ReplicaState, Resources
from modelplane.errors import redact_paths
from modelplane.registry.service import PushRequest
from modelplane.scheduler.controller import Controller
from modelplane.server import Platform
from modelplane.serving.routing import RoutingTable
from modelplane.settings import Settings


class FailingExecutor:
    """Starts replicas that fail at once with ``message``."""

    token = "t"
    replica_tls = None

    def __init__(self, message: str) -> None:
        self.message = message
        self.replicas: dict[str, Replica] = {}

    async def nodes(self) -> list[Node]:
        return [Node("n1", Resources(4, 8192))]

    async def start(self, spec: ReplicaSpec) -> Replica:
        replica = Replica(spec.replica_id, spec.deployment, spec.model, spec.version,
                          f"unix:/{spec.replica_id}", ReplicaState.FAILED, 0.0,
                          message=self.message, revision=spec.revision, node=spec.node,
                          resources=spec.resources)  # fmt: skip
        self.replicas[spec.replica_id] = replica
        return replica

    async def stop(self, replica_id: str) -> None:
        self.replicas.pop(replica_id, None)

    async def observe(self) -> list[Replica]:
        return list(self.replicas.values())

    outlives_server = False

    async def release(self) -> None:
        self.replicas.clear()

    async def shutdown(self) -> None:
        self.replicas.clear()


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def unloadable() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    node = helper.make_node("Nope", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [x], [y])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    return bytes(helper.make_model(graph, opset_imports=opsets).SerializeToString())


def folder(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def assert_no_path(text: str, settings: Settings) -> None:
    for secret in (str(settings.home), str(settings.home.parent), "/work/", "/upload/", "/tmp/"):
        assert secret not in text, text


async def test_conversion_and_push_errors_carry_no_server_path(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    shown: list[str] = []
    answer = await api.post("/api/v1/models/one/versions", content=unloadable())
    assert answer.status_code == 422
    shown.append(answer.text)
    # a folder whose graph ONNX Runtime cannot load: the error comes from the worker, whose
    # every path lies under the server's home
    content = folder({"m/model.onnx": unloadable(), "m/weights.bin": b"\0" * 16})
    answer = await api.post("/api/v1/models/two/versions", content=content)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    for _ in range(600):
        job = (await api.get(f"/api/v1/conversions/{job['id']}")).json()
        if job["state"] != "running":
            break
        await asyncio.sleep(0.1)
    assert job["state"] == "failed"
    assert "Nope" in job["error"]
    shown.append(str(job))
    shown.append((await api.get("/api/v1/conversions")).text)
    for text in shown:
        assert_no_path(text, settings)


@pytest.mark.parametrize(
    "message",
    [
        "exited with code 1: FileNotFoundError: [Errno 2] No such file: '{home}/blobs/ab/cd'",
        "exited with code 1: onnxruntime: Load model from {home}/blobs/ab/abcd failed",
    ],
)
async def test_a_failed_deployment_shows_no_server_path(
    platform: Platform,
    iris_bytes: bytes,
    caplog: pytest.LogCaptureFixture,
    message: str,
) -> None:
    services = platform.services
    home = str(services.settings.home)
    await services.registry.push(PushRequest("iris"), body(iris_bytes))
    services.deployments.apply(ModelRef("iris"), replicas=1)
    detail = message.format(home=home)
    executor = FailingExecutor(detail)
    controller = Controller(
        services.deployments, executor, RoutingTable(), lambda d: services.settings.blob_dir / d
    )
    with caplog.at_level(logging.WARNING, logger="modelplane.controller"):
        await controller.step()
        await controller.step()
    failure = controller.view.failures.get("iris")
    assert failure is not None
    assert failure == redact_paths(detail)
    assert home not in failure
    assert all(home not in (r.message or "") for r in controller.view.replicas)
    assert all(home not in e["reason"] for e in controller.view.events_of("iris"))
    assert home in caplog.text  # the operator still has it
