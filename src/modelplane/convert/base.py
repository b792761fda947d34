"""What every source-format converter gives back (runs inside the conversion worker)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from modelplane.convert.archive import UnpackLimits

Arrays = dict[str, np.ndarray]
OPTIMIZATION_LEVELS = ("basic", "extended", "all")
QUANTIZATIONS = ("int8", "fp16")
DEFAULT_UNPACK = UnpackLimits(2 << 30)


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    trust_pickle: bool = False
    input_shape: tuple[int, ...] | None = None
    unpack: UnpackLimits = DEFAULT_UNPACK  # what an uploaded archive may unpack to


@dataclass(frozen=True, slots=True)
class Converted:
    """The ONNX file, and a way to run the original model on the same inputs."""

    onnx_path: Path
    original: Callable[[Arrays], Arrays]
    label_outputs: tuple[str, ...] = ()
    example_inputs: Arrays = field(default_factory=dict)
    # inputs the parity check must use when the user gave none (e.g. token ids of real text)
    parity_inputs: Arrays | None = None


class Converter(Protocol):
    def __call__(self, source: Path, workdir: Path, options: ConvertOptions) -> Converted: ...
