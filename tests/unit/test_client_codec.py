import numpy as np
import pytest

from modelplane.client_wire import decode_output as _decode_output
from modelplane.client_wire import encode_input as _encode_input
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


@pytest.mark.parametrize("value", [[["a", 3.5, 1.4, 0.2]], [[1.0, 2.0], [3.0]], [[None, {"x": 1}]]])
def test_values_that_are_not_a_numeric_tensor_are_invalid_input(value) -> None:
    # was a ValueError from numpy, printed by the CLI as a traceback
    with pytest.raises(InvalidInput, match="input 'float_input': cannot be read as a FP32 tensor"):
        _encode_input("float_input", value, "FP32")
