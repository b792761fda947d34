"""A replica's core in process: real ONNX Runtime, every datatype, every bad input, batching."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from modelplane.protocol import frames
from modelplane.protocol.v2 import Limits
from modelplane.runtime.batching import BatchingConfig, BatchingRuntime
from modelplane.runtime.onnx import OnnxRuntime
from modelplane.serving.dataplane import DataPlane
from modelplane.telemetry.logs import LogWriter, RequestLog, json_logging
from modelplane.testing import identity_onnx


class Reply:
    def __init__(self, frame: frames.ResponseFrame) -> None:
        self.status_code = frame.status
        self.content = frame.payload
        self.header_length = frame.header_len

    def json(self) -> Any:
        return orjson.loads(self.content)


class ReplicaCore:
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._ids = 0

    async def send(
        self,
        op: int,
        body: bytes = b"",
        header_len: int | None = None,
        timeout_ms: int = 0,
        request_id: str = "",
    ) -> Reply:
        self._ids += 1
        request = frames.RequestFrame(self._ids, op, timeout_ms, header_len, body, request_id)
        # through the codec too, as the socket would carry it
        [decoded] = frames.request_reader().feed(frames.encode_request(request))
        response = await self.plane.handle(decoded)
        [back] = frames.response_reader().feed(frames.encode_response(response))
        return Reply(back)

    async def infer(self, body: Any, header_len: int | None = None, timeout_ms: int = 0) -> Reply:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        return await self.send(frames.INFER, raw, header_len, timeout_ms)


ReplicaFactory = Callable[..., ReplicaCore]


@pytest.fixture
def replica(tmp_path: Path) -> ReplicaFactory:
    count = [0]

    def make(model: bytes, batching: BatchingConfig | None = None) -> ReplicaCore:
        count[0] += 1
        path = tmp_path / f"m{count[0]}.onnx"
        path.write_bytes(model)
        runtime = BatchingRuntime(OnnxRuntime(path), batching or BatchingConfig())
        plane = DataPlane("m", "1", runtime, Limits(max_elements=10_000))
        plane.load()
        return ReplicaCore(plane)

    return make


JSON_VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, True],
    "UINT8": [0, 1, 200, 255],
    "UINT16": [0, 1, 60000, 7],
    "UINT32": [0, 1, 4_000_000_000, 7],
    "UINT64": [0, 1, 2**63, 7],
    "INT8": [-128, 0, 127, 5],
    "INT16": [-30000, 0, 30000, 5],
    "INT32": [-(2**31), 0, 2**31 - 1, 5],
    "INT64": [-(2**63), 0, 2**63 - 1, 5],
    "FP16": [0.5, -1.25, 2.0, 0.0],
    "FP32": [0.5, -1.25, 3.0e38, 0.0],
    "FP64": [0.1, -1.25, 1e300, 0.0],
    "BYTES": ["a", "", "héllo", "z"],
}


@pytest.mark.parametrize("datatype", sorted(JSON_VALUES))
async def test_every_datatype_round_trips_as_json(replica, datatype: str) -> None:
    client = replica(identity_onnx(datatype))
    values = JSON_VALUES[datatype]
    body = {"id": "7", "inputs": [{"name": "x", "shape": [2, 2], "datatype": datatype,
                                   "data": values}]}  # fmt: skip
    response = await client.infer(body)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["id"] == "7"
    assert doc["model_name"] == "m"
    out = doc["outputs"][0]
    assert (out["name"], out["datatype"], out["shape"]) == ("y", datatype, [2, 2])
    assert out["data"] == values


@pytest.mark.parametrize("datatype", sorted(JSON_VALUES))
async def test_every_datatype_round_trips_as_binary(replica, datatype: str) -> None:
    client = replica(identity_onnx(datatype))
    values = JSON_VALUES[datatype]
    if datatype == "BYTES":
        blob = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
    else:
        from modelplane.protocol.datatypes import V2_TO_NUMPY

        blob = np.array(values, dtype=V2_TO_NUMPY[datatype]).tobytes()
    header = orjson.dumps(
        {
            "inputs": [{"name": "x", "shape": [2, 2], "datatype": datatype,
                        "parameters": {"binary_data_size": len(blob)}}],
            "parameters": {"binary_data_output": True},
        }
    )  # fmt: skip
    response = await client.infer(header + blob, len(header))
    assert response.status_code == 200, response.content
    length = response.header_length
    assert length is not None
    doc = orjson.loads(response.content[:length])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == len(blob)
    assert response.content[length:] == blob


async def test_metadata_and_health(replica, iris_bytes) -> None:
    client = replica(iris_bytes)
    assert (await client.send(frames.READY)).status_code == 200
    meta = (await client.send(frames.METADATA)).json()
    assert meta["inputs"] == [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert (await client.send(99)).status_code == 400


async def test_iris_matches_scikit_learn(replica, iris_bytes, iris_sklearn) -> None:
    from sklearn.datasets import load_iris

    client = replica(iris_bytes)
    x = load_iris().data[::10].astype(np.float32)
    body = {"inputs": [{"name": "float_input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.tolist()}], "outputs": [{"name": "probabilities"}]}  # fmt: skip
    response = await client.infer(body)
    out = response.json()["outputs"]
    assert [o["name"] for o in out] == ["probabilities"]
    got = np.array(out[0]["data"]).reshape(out[0]["shape"])
    np.testing.assert_allclose(got, iris_sklearn.predict_proba(x), atol=1e-5)


GOOD = {"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
                    "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip


def with_input(**changes: Any) -> bytes:
    tensor = {**GOOD["inputs"][0], **changes}
    return orjson.dumps({"inputs": [tensor]})


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{", 400, "not valid JSON"),
        (with_input(name="X"), 400, "unknown input 'X'"),
        (orjson.dumps({"inputs": [{"name": "float_input",
         "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}, {"name": "extra",
         "shape": [1], "datatype": "FP32", "data": [1]}]}), 400, "unknown input 'extra'"),
        (with_input(datatype="FP64"), 400, "expected datatype FP32"),
        (with_input(shape=[2, 4]), 400, "needs 8 elements, got 4"),
        (with_input(shape=[1, -4]), 400, "negative dimension"),
        (with_input(shape=[10**12, 4]), 400, "over the limit"),
        (with_input(shape=[1, 3]), 400, "expected shape [-1, 4]"),
        (orjson.dumps({**GOOD, "parameters": {"timeout": "soon"}}), 400, "positive integer"),
    ],
)  # fmt: skip
async def test_bad_inputs_get_clear_4xx_and_replica_keeps_serving(
    replica, iris_bytes, body: bytes, status: int, message: str
) -> None:
    client = replica(iris_bytes)
    response = await client.infer(body)
    assert response.status_code == status
    assert message in response.json()["error"]
    again = await client.infer(GOOD)
    assert again.status_code == 200


async def test_concurrent_requests_are_batched_and_answered_each(replica, iris_bytes) -> None:
    from sklearn.datasets import load_iris

    client = replica(iris_bytes, BatchingConfig(max_batch_size=16))
    x = load_iris().data.astype(np.float32)
    bodies = [
        {"id": str(i), "inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
                                   "data": x[i].tolist()}]}
        for i in range(len(x))
    ]  # fmt: skip
    replies = await asyncio.gather(*(client.infer(b) for b in bodies))
    runtime = client.plane._runtime
    assert max(runtime.batch_sizes) > 1, runtime.batch_sizes
    assert sum(size * n for size, n in runtime.batch_sizes.items()) == len(x)
    # compared with ONNX Runtime run directly on the whole set
    expected = runtime._inner.run({"float_input": x}, ["label", "probabilities"])
    for i, reply in enumerate(replies):
        doc = reply.json()
        assert doc["id"] == str(i)
        proba = np.array(doc["outputs"][1]["data"], dtype=np.float32)
        np.testing.assert_allclose(proba, expected["probabilities"][i], atol=1e-6)
        assert doc["outputs"][0]["data"] == [int(expected["label"][i])]


async def test_a_timeout_ends_a_slow_request_with_a_clear_error(replica, iris_bytes) -> None:
    client = replica(iris_bytes, BatchingConfig(max_batch_size=8, max_queue_delay_s=0.5))
    reply = await client.infer({**GOOD, "parameters": {"timeout": 20_000}})  # 20 ms, in µs
    assert reply.status_code == 504
    assert "timeout of 20 ms" in reply.json()["error"]
    reply = await client.infer(GOOD, timeout_ms=30)
    assert reply.status_code == 504


class CrashingRuntime:
    """A model that loads but fails at run time, as a broken custom operator would."""

    def __init__(self, inner: OnnxRuntime) -> None:
        self._inner = inner
        self.signature = inner.signature

    def load(self) -> None:
        self._inner.load()
        self.signature = self._inner.signature

    async def predict(self, inputs: Any, outputs: Any) -> dict[str, np.ndarray]:
        raise RuntimeError("kernel crashed reading /srv/secret/weights.bin")


async def test_a_model_that_crashes_is_a_logged_and_counted_500(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(identity_onnx("FP32"))
    runtime = BatchingRuntime(CrashingRuntime(OnnxRuntime(path)), BatchingConfig())
    log_file = tmp_path / "replica.log"
    with LogWriter(log_file) as writer, json_logging(writer, "replica", "m", "r1"):
        plane = DataPlane("m", "1", runtime, Limits(max_elements=100),
                          RequestLog(writer, "replica", "m", "r1"))  # fmt: skip
        plane.load()
        body = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                            "data": [1, 2, 3, 4]}]}  # fmt: skip
        reply = await ReplicaCore(plane).send(frames.INFER, orjson.dumps(body), request_id="req-9")
    # the client: a 500 that names the request id and holds nothing of the model's internals
    assert reply.status_code == 500
    message = reply.json()["error"]
    assert "req-9" in message
    assert "RuntimeError" not in message
    assert "/srv/secret" not in message
    assert "Traceback" not in message
    # counted as a failure, in the same statistics the gateway turns into metrics
    assert plane.stats()["failure_count"] == 1
    # the replica's log: the request line says what the client saw; the traceback sits next to it
    lines = [orjson.loads(line) for line in log_file.read_bytes().splitlines()]
    [request] = [r for r in lines if r["message"] == "infer"]
    assert (request["level"], request["request_id"]) == ("error", "req-9")
    assert request["fields"]["status"] == 500
    assert request["fields"]["error"] == message
    [crash] = [r for r in lines if r["message"] != "infer"]
    assert (crash["level"], crash["request_id"], crash["replica"]) == ("error", "req-9", "r1")
    assert "Traceback" in crash["message"]
    assert "RuntimeError: kernel crashed reading /srv/secret/weights.bin" in crash["message"]


@pytest.mark.parametrize("action", ["log", "flag", "reject"])
async def test_input_guard_logs_flags_or_rejects_an_outlier(tmp_path: Path, action: str) -> None:
    from modelplane.security.inputguard import InputGuard, input_stats
    from modelplane.serving.gateway import _flagged

    path = tmp_path / "m.onnx"
    path.write_bytes(identity_onnx("FP32", [-1, 3]))
    rng = np.random.default_rng(0)
    stats = input_stats({"x": rng.normal(0.0, 1.0, (200, 3)).astype(np.float32)})
    guard = InputGuard(stats, 6.0)
    runtime = BatchingRuntime(OnnxRuntime(path), BatchingConfig())
    plane = DataPlane("m", "1", runtime, Limits(max_elements=10_000), guard=(guard, action))
    plane.load()
    core = ReplicaCore(plane)
    far = stats["x"]["max"][0] + 50 * stats["x"]["std"][0]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [far, 0, 0]}]}
    normal = await core.infer({"inputs": [{**body["inputs"][0], "data": [0.1, 0, 0]}]})
    assert normal.status_code == 200
    reply = await core.infer(body)
    if action == "reject":
        assert reply.status_code == 422
        assert "input 'x' feature 0" in reply.json()["error"]
        assert "50.0 standard deviations" in reply.json()["error"]
    elif action == "flag":
        assert reply.status_code == 200 | frames.OUTLIER
        forwarded = _flagged(frames.ResponseFrame(1, reply.status_code, None, reply.content))
        assert (forwarded.status, forwarded.outlier) == (200, "x")
        assert orjson.loads(forwarded.body)["outputs"][0]["name"]
    else:
        assert reply.status_code == 200
    assert plane.stats()["input_outliers"] == 1
