import struct

import numpy as np
import orjson
import pytest

from modelplane.domain import Signature, TensorSpec
from modelplane.errors import InvalidInput
from modelplane.protocol.v2 import Limits, decode_request, encode_response, output_names

SIG = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)),),
    outputs=(TensorSpec("label", "INT64", (-1,)), TensorSpec("proba", "FP32", (-1, 3))),
)
LIMITS = Limits(max_elements=1000)


def request(**overrides: object) -> bytes:
    tensor: dict[str, object] = {
        "name": "x",
        "shape": [2, 4],
        "datatype": "FP32",
        "data": list(range(8)),
    }
    tensor.update(overrides)
    return orjson.dumps({"id": "42", "inputs": [tensor]})


def test_json_request_decodes_to_typed_arrays() -> None:
    decoded = decode_request(request(), None, SIG, LIMITS)
    assert decoded.id == "42"
    assert decoded.inputs["x"].dtype == np.float32
    assert decoded.inputs["x"].shape == (2, 4)
    assert decoded.inputs["x"][1, 3] == 7


def test_nested_data_is_accepted() -> None:
    decoded = decode_request(request(data=[[1, 2, 3, 4], [5, 6, 7, 8]]), None, SIG, LIMITS)
    assert decoded.inputs["x"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (orjson.dumps({"inputs": []}), "non-empty list"),
        (request(name="y"), "unknown input 'y'; this model's inputs are: x"),
        (request(datatype="INT64"), "expected datatype FP32, got 'INT64'"),
        (request(shape=[2, 5]), "expected shape [-1, 4], got [2, 5]"),
        (request(shape=[8]), "rank 2"),
        (request(shape=[-2, 4]), "negative dimension"),
        (request(shape=[1000, 4]), "over the limit"),
        (request(shape=[3, 4]), "needs 12 elements, got 8"),
        (request(data=["a"] * 8), "not a rectangular array of FP32"),
        (request(data=[[1, 2, 3, 4], [5, 6]]), "not a rectangular array"),
        (request(data=[True] * 8), "booleans"),
        (request(shape="2x4"), "must be a list of integers"),
        (
            orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]}),
            "no 'data'",
        ),
    ],
)
def test_bad_requests_say_what_was_expected(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_request(body, None, SIG, LIMITS)
    assert message in info.value.message


def test_missing_and_duplicate_inputs() -> None:
    two = Signature((TensorSpec("a", "INT64", (1,)), TensorSpec("b", "INT64", (1,))), SIG.outputs)
    only_a = orjson.dumps(
        {"inputs": [{"name": "a", "shape": [1], "datatype": "INT64", "data": [1]}]}
    )
    with pytest.raises(InvalidInput, match="missing input"):
        decode_request(only_a, None, two, LIMITS)
    twice = orjson.dumps(
        {"inputs": [{"name": "a", "shape": [1], "datatype": "INT64", "data": [1]}] * 2}
    )
    with pytest.raises(InvalidInput, match="given twice"):
        decode_request(twice, None, two, LIMITS)


def test_unknown_requested_output_is_rejected() -> None:
    body = orjson.dumps(
        {"inputs": orjson.loads(request())["inputs"], "outputs": [{"name": "nope"}]}
    )
    with pytest.raises(InvalidInput, match="unknown output 'nope'"):
        decode_request(body, None, SIG, LIMITS)


def test_binary_input_and_output_round_trip() -> None:
    data = np.arange(8, dtype=np.float32)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 32},
                }
            ],
            "outputs": [{"name": "proba", "parameters": {"binary_data": True}}],
        }
    )
    decoded = decode_request(header + data.tobytes(), len(header), SIG, LIMITS)
    assert decoded.inputs["x"].ravel().tolist() == data.tolist()
    names = output_names(decoded, SIG)
    assert names == ["proba"]
    proba = np.ones((2, 3), dtype=np.float32)
    body, length = encode_response("iris", "1", decoded, {"proba": proba}, names)
    assert length is not None
    doc = orjson.loads(body[:length])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 24
    assert np.frombuffer(body[length:], dtype=np.float32).tolist() == [1.0] * 6


def test_binary_size_that_does_not_fit_is_rejected() -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 4], "datatype": "FP32",
                 "parameters": {"binary_data_size": 32}}
            ]
        }
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="does not fit"):
        decode_request(header + b"\0" * 16, len(header), SIG, LIMITS)


def test_raw_binary_body_is_a_batch_for_single_input_models() -> None:
    data = np.arange(12, dtype=np.float32)
    decoded = decode_request(data.tobytes(), 0, SIG, LIMITS)
    assert decoded.inputs["x"].shape == (3, 4)
    assert decoded.binary_output
    with pytest.raises(InvalidInput, match="whole FP32 tensors"):
        decode_request(b"\0" * 10, 0, SIG, LIMITS)


def test_bytes_tensors_in_json_and_binary() -> None:
    sig = Signature((TensorSpec("s", "BYTES", (-1,)),), (TensorSpec("s", "BYTES", (-1,)),))
    body = orjson.dumps({"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES",
                                     "data": ["héllo", ""]}]})  # fmt: skip
    decoded = decode_request(body, None, sig, LIMITS)
    assert decoded.inputs["s"].tolist() == ["héllo", ""]
    blob = b"".join(struct.pack("<I", len(b)) + b for b in (b"ab", b"xyz"))
    tensor = {"name": "s", "shape": [2], "datatype": "BYTES"}
    header = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}]})
    decoded = decode_request(header + blob, len(header), sig, LIMITS)
    assert decoded.inputs["s"].tolist() == ["ab", "xyz"]
    decoded.binary_output = True
    out, length = encode_response("m", "1", decoded, {"s": decoded.inputs["s"]}, ["s"])
    assert length is not None
    assert out[length:] == blob


def test_response_echoes_id_and_names_version() -> None:
    decoded = decode_request(request(), None, SIG, LIMITS)
    results = {"label": np.array([0, 2]), "proba": np.zeros((2, 3), dtype=np.float32)}
    body, length = encode_response("iris", "3", decoded, results, ["label", "proba"])
    assert length is None
    doc = orjson.loads(body)
    assert doc["id"] == "42"
    assert doc["model_version"] == "3"
    assert doc["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]}
