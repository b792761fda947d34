import numpy as np
import pytest

from modelplane.client import _decode_output, _encode_input
from modelplane.errors import InvalidInput


def test_inputs_are_cast_to_the_model_datatype_and_round_trip() -> None:
    encoded = _encode_input("x", [[1, 2], [3, 4]], "FP32")
    assert (encoded["datatype"], encoded["shape"]) == ("FP32", [2, 2])
    back = _decode_output(encoded)
    assert back.dtype == np.float32
    assert back.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert _encode_input("s", ["a", b"b"])["data"] == ["a", "b"]
    assert _encode_input("b", [True, False])["datatype"] == "BOOL"


def test_unsupported_numpy_types_are_refused_clearly() -> None:
    with pytest.raises(InvalidInput, match="complex128 is not supported"):
        _encode_input("z", np.array([1 + 2j]))
