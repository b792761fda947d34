"""Which extra a source format needs, and the message when it is missing."""

from __future__ import annotations

import pytest

from modelplane.convert.extras import (
    FORMAT_EXTRAS,
    extra_for_module,
    importable,
    require_extra,
)
from modelplane.convert.worker import CONVERTERS
from modelplane.errors import UnsupportedModel


def test_a_missing_module_names_the_extra_to_install() -> None:
    def without_torch(module: str) -> bool:
        return module != "torch"

    message = "pushing a PyTorch model needs the torch extra: pip install 'modelplane[torch]'"
    for source_format in ("torchscript", "torch-export"):
        with pytest.raises(UnsupportedModel) as caught:
            require_extra(source_format, without_torch)
        assert caught.value.message == message
        assert caught.value.status == 422
    with pytest.raises(UnsupportedModel, match=r"pip install 'modelplane\[keras\]'"):
        require_extra("keras-h5", without_torch)  # Keras runs on the torch backend
    require_extra("sklearn", without_torch)


def test_formats_of_the_core_need_no_extra() -> None:
    for source_format in ("onnx", "onnx-folder", "optimize"):
        require_extra(source_format, lambda _: False)


def test_every_converted_format_is_in_the_table() -> None:
    assert set(CONVERTERS) - {"onnx-folder"} == set(FORMAT_EXTRAS)


def test_modules_are_looked_up_without_importing() -> None:
    assert importable("json")
    assert not importable("modelplane_no_such_module")
    assert extra_for_module("onnxscript") == "torch"
    assert extra_for_module("tf2onnx") == "tensorflow"
    assert extra_for_module("numpy") is None
