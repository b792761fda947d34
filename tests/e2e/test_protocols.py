"""Triton's HTTP (JSON and binary) and gRPC clients give what ONNX Runtime gives directly."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from modelplane.protocol.grpc import grpc_predict_v2_pb2 as pb
from modelplane.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from modelplane.testing import multi_identity_onnx

pytestmark = pytest.mark.e2e

TYPES = {"a": "FP32", "b": "FP16", "c": "INT64", "d": "BOOL", "e": "BYTES"}


def sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "a": rng.normal(size=(3, 2)).astype(np.float32),
        "b": rng.normal(size=(3, 2)).astype(np.float16),
        "c": rng.integers(-(2**40), 2**40, size=(3, 2), dtype=np.int64),
        "d": rng.integers(0, 2, size=(3, 2)).astype(bool),
        "e": np.array([["x", "héllo"], ["", "ünï"], ["a b", "z"]], dtype=object),
    }


@pytest.fixture(scope="module")
def multi(shared_server, tmp_path_factory) -> Any:
    model = multi_identity_onnx(TYPES)
    path = tmp_path_factory.mktemp("multi") / "multi.onnx"
    path.write_bytes(model)
    assert shared_server.cli("push", str(path), "--name", "multi").returncode == 0
    deploy = shared_server.cli("deploy", "multi")
    assert deploy.returncode == 0, deploy.stderr
    direct = ort.InferenceSession(model).run(None, sample())
    expected = {f"{name}_out": value for name, value in zip(TYPES, direct, strict=True)}
    return shared_server, expected


def check(result: Any, expected: dict[str, np.ndarray]) -> None:
    for name, want in expected.items():
        got = result.as_numpy(name)
        if want.dtype == object:
            got = np.array([x.decode() if isinstance(x, bytes) else x for x in got.ravel()],
                           dtype=object).reshape(got.shape)  # fmt: skip
        assert got.dtype == want.dtype or want.dtype == object, name
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("binary", [True, False])
def test_http_client(multi, binary: bool) -> None:
    server, expected = multi
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    inputs = []
    for name, value in sample().items():
        tensor = triton_http.InferInput(name, list(value.shape), TYPES[name])
        # FP16 has no JSON form in Triton's client; it always goes binary
        tensor.set_data_from_numpy(value, binary_data=binary or TYPES[name] == "FP16")
        inputs.append(tensor)
    outputs = [triton_http.InferRequestedOutput(n, binary_data=binary) for n in expected]
    result = client.infer("multi", inputs, outputs=outputs, headers=server.auth)
    check(result, expected)


def test_grpc_client(multi) -> None:
    server, expected = multi
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    metadata = [("authorization", f"Bearer {server.key}")]
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("multi", headers=dict(metadata))
    meta = client.get_model_metadata("multi", headers=dict(metadata), as_json=True)
    assert [i["datatype"] for i in meta["inputs"]] == list(TYPES.values())
    inputs = []
    for name, value in sample().items():
        tensor = triton_grpc.InferInput(name, list(value.shape), TYPES[name])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer("multi", inputs, headers=dict(metadata), request_id="g1")
    assert result.get_response().id == "g1"
    check(result, expected)


def test_grpc_errors_use_grpc_status_codes(multi) -> None:
    server, _ = multi
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("multi")
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    headers = {"authorization": f"Bearer {server.key}"}
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("ghost", headers=headers)
    assert info.value.status() == "StatusCode.NOT_FOUND"
    bad = triton_grpc.InferInput("a", [3, 2], "FP64")
    bad.set_data_from_numpy(np.zeros((3, 2)))
    with pytest.raises(InferenceServerException) as info:
        client.infer("multi", [bad], headers=headers)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "expected datatype FP32" in info.value.message()


def test_grpc_bytes_that_are_not_text_are_an_invalid_argument(multi) -> None:
    """BYTES elements are bytes: through tritonclient (raw_input_contents) and through the raw
    stub's bytes_contents, what ONNX Runtime cannot take is INVALID_ARGUMENT with a message."""
    server, _ = multi
    headers = {"authorization": f"Bearer {server.key}"}
    values = sample()
    values["e"] = np.array([[b"\xff\xfe", b"ok"]] * 3, dtype=object)
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    inputs = []
    for name, value in values.items():
        tensor = triton_grpc.InferInput(name, list(value.shape), TYPES[name])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    with pytest.raises(InferenceServerException) as info:
        client.infer("multi", inputs, headers=headers)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "not UTF-8" in info.value.message()

    text = multi_identity_onnx({"e": "BYTES"})
    path = server.home.parent / "text.onnx"
    path.write_bytes(text)
    assert server.cli("push", str(path), "--name", "text").returncode == 0
    assert server.cli("deploy", "text").returncode == 0
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated
        metadata = list(headers.items())
        for elements, status in (
            ([b"h\xc3\xa9", b""], None),
            ([b"\xff\xfe", b"ok"], grpc.StatusCode.INVALID_ARGUMENT),
        ):
            request = pb.ModelInferRequest(model_name="text")
            tensor = request.inputs.add(name="e", datatype="BYTES", shape=[1, 2])
            tensor.contents.bytes_contents.extend(elements)
            if status is None:
                answer = stub.ModelInfer(request, metadata=metadata)
                blob = answer.raw_output_contents[0]
                assert blob == b"".join(len(e).to_bytes(4, "little") + e for e in elements)
                continue
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(request, metadata=metadata)
            assert error.value.code() == status
            assert "not UTF-8" in (error.value.details() or "")
