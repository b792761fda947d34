"""gRPC BYTES elements are bytes: carried as they came through the binary form; bytes that the
model's runtime cannot take are an INVALID_ARGUMENT with a message, never a Python error."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from modelplane.domain import Signature, TensorSpec
from modelplane.errors import InvalidInput
from modelplane.protocol.grpc import grpc_predict_v2_pb2 as pb
from modelplane.protocol.v2 import Limits, decode_request
from modelplane.serving.grpc import to_rest

SIGNATURE = Signature(
    (TensorSpec("e", "BYTES", (-1,)), TensorSpec("a", "FP32", (-1,))),
    (TensorSpec("y", "FP32", (-1,)),),
)


def request(*elements: bytes) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    text = message.inputs.add(name="e", datatype="BYTES", shape=[len(elements)])
    text.contents.bytes_contents.extend(elements)
    numbers = message.inputs.add(name="a", datatype="FP32", shape=[2])
    numbers.contents.fp32_contents.extend([1.0, 2.5])
    return message


def test_bytes_contents_travel_as_bytes() -> None:
    body, header_length = to_rest(request(b"h\xc3\xa9llo", b"", b"\xff\xfe\x00"))
    header = orjson.loads(body[:header_length])
    assert header["inputs"][0]["parameters"] == {"binary_data_size": 4 * 3 + 6 + 3}
    assert header["inputs"][1]["data"] == [1.0, 2.5]
    assert body[header_length:] == b"".join(
        len(e).to_bytes(4, "little") + e for e in (b"h\xc3\xa9llo", b"", b"\xff\xfe\x00")
    )


def test_text_arrives_as_text() -> None:
    body, header_length = to_rest(request(b"h\xc3\xa9llo", b""))
    decoded = decode_request(body, header_length, SIGNATURE, Limits(1 << 20))
    assert list(decoded.inputs["e"]) == ["héllo", ""]
    np.testing.assert_array_equal(decoded.inputs["a"], np.array([1.0, 2.5], np.float32))


def test_bytes_that_are_not_text_are_an_invalid_argument() -> None:
    body, header_length = to_rest(request(b"ok", b"\xff\xfe"))
    with pytest.raises(InvalidInput, match="BYTES element 1 is not UTF-8"):
        decode_request(body, header_length, SIGNATURE, Limits(1 << 20))
