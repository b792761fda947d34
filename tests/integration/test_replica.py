"""A replica's V2 surface in process: real ONNX Runtime, every datatype, every bad input."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from modelplane.protocol.v2 import Limits
from modelplane.runtime.onnx import OnnxRuntime
from modelplane.serving.dataplane import DataPlane
from modelplane.serving.replica_app import TOKEN_HEADER, create_replica_app
from modelplane.testing import identity_onnx

TOKEN = "t0ken"
ReplicaFactory = Callable[[bytes], Any]


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[ReplicaFactory]:
    clients: list[httpx.AsyncClient] = []

    def make(model: bytes, max_bytes: int = 1 << 20) -> httpx.AsyncClient:
        path = tmp_path / f"m{len(clients)}.onnx"
        path.write_bytes(model)
        plane = DataPlane("m", "1", OnnxRuntime(path), Limits(max_elements=10_000))
        plane.load()
        app = create_replica_app(plane, TOKEN, max_bytes)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://replica",
            headers={TOKEN_HEADER: TOKEN},
        )
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.aclose()


JSON_VALUES = {
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
    response = await client.post("/v2/models/m/infer", content=orjson.dumps(body))
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
    response = await client.post(
        "/v2/models/m/infer",
        content=header + blob,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    doc = orjson.loads(response.content[:length])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == len(blob)
    assert response.content[length:] == blob


async def test_metadata_and_health(replica, iris_bytes) -> None:
    client = replica(iris_bytes)
    assert (await client.get("/v2/health/ready")).status_code == 200
    assert (await client.get("/v2/models/m/ready")).status_code == 200
    meta = (await client.get("/v2/models/m")).json()
    assert meta["inputs"] == [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert (await client.get("/v2/models/other")).status_code == 404
    assert (await client.get("/v2/models/m/versions/9")).status_code == 404


async def test_token_is_required(replica, iris_bytes) -> None:
    client = replica(iris_bytes)
    response = await client.get("/v2/health/live", headers={TOKEN_HEADER: "wrong"})
    assert response.status_code == 401


async def test_iris_matches_scikit_learn(replica, iris_bytes, iris_sklearn) -> None:
    from sklearn.datasets import load_iris

    client = replica(iris_bytes)
    x = load_iris().data[::10].astype(np.float32)
    body = {"inputs": [{"name": "float_input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.tolist()}], "outputs": [{"name": "probabilities"}]}  # fmt: skip
    response = await client.post("/v2/models/m/infer", json=body)
    out = response.json()["outputs"]
    assert [o["name"] for o in out] == ["probabilities"]
    got = np.array(out[0]["data"]).reshape(out[0]["shape"])
    np.testing.assert_allclose(got, iris_sklearn.predict_proba(x), atol=1e-5)


GOOD = {"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
                    "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip


def with_input(**changes: Any) -> bytes:
    tensor = {**GOOD["inputs"][0], **changes}  # type: ignore[dict-item]
    return orjson.dumps({"inputs": [tensor]})


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nope/infer", orjson.dumps(GOOD), 404, "not served here"),
        ("/v2/models/m/versions/2/infer", orjson.dumps(GOOD), 404, "version 2"),
        ("/v2/models/m/infer", b"{", 400, "not valid JSON"),
        ("/v2/models/m/infer", with_input(name="X"), 400, "unknown input 'X'"),
        ("/v2/models/m/infer", orjson.dumps({"inputs": [{"name": "float_input",
         "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}, {"name": "extra",
         "shape": [1], "datatype": "FP32", "data": [1]}]}), 400, "unknown input 'extra'"),
        ("/v2/models/m/infer", with_input(datatype="FP64"), 400, "expected datatype FP32"),
        ("/v2/models/m/infer", with_input(shape=[2, 4]), 400, "needs 8 elements, got 4"),
        ("/v2/models/m/infer", with_input(shape=[1, -4]), 400, "negative dimension"),
        ("/v2/models/m/infer", with_input(shape=[10**12, 4]), 400, "over the limit"),
        ("/v2/models/m/infer", with_input(shape=[1, 3]), 400, "expected shape [-1, 4]"),
        ("/v2/models/m/infer", b"x" * 2000, 413, "over the limit of 1000 bytes"),
    ],
)  # fmt: skip
async def test_bad_inputs_get_clear_4xx_and_replica_keeps_serving(
    replica, iris_bytes, path: str, body: bytes, status: int, message: str
) -> None:
    client = replica(iris_bytes, max_bytes=1000)
    response = await client.post(path, content=body)
    assert response.status_code == status
    assert message in response.json()["error"]
    again = await client.post("/v2/models/m/infer", json=GOOD)
    assert again.status_code == 200
