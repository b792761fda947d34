"""What every source-format converter gives back (runs inside the conversion worker)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from modelplane.convert.archive import UnpackLimits
from modelplane.errors import InvalidInput

Arrays = dict[str, np.ndarray]
OPTIMIZATION_LEVELS = ("basic", "extended", "all")
QUANTIZATIONS = ("int8", "fp16")
DEFAULT_UNPACK = UnpackLimits(2 << 30)


@dataclass(frozen=True, slots=True)
class Optimization:
    """What ``modelplane optimize`` asks for: a graph optimization level and/or a
    quantization, or ``auto`` (the share of rows whose prediction may change, 0..1): every way
    tried, the fastest within it kept."""

    level: str | None = None
    quantize: str | None = None
    auto: float | None = None

    def check(self) -> None:
        """Raise InvalidInput (400) for a request that says nothing, or something unknown."""
        if self.auto is not None:
            if self.level is not None or self.quantize is not None:
                raise InvalidInput("--auto tries every level and quantization itself; drop "
                                   "--level and --quantize, or drop --auto")  # fmt: skip
            if not 0 <= self.auto <= 1:
                raise InvalidInput("--max-accuracy-drop is a share of rows from 0% to 100%, "
                                   "e.g. 0.5%")  # fmt: skip
            return
        if self.level is None and self.quantize is None:
            raise InvalidInput("say what to do: --auto, or --level basic|extended|all and/or "
                               "--quantize int8|fp16")  # fmt: skip
        if self.level not in (None, *OPTIMIZATION_LEVELS) or self.quantize not in (
            None, *QUANTIZATIONS,
        ):  # fmt: skip
            raise InvalidInput(
                f"invalid optimization (level {self.level!r}, quantize {self.quantize!r}); use "
                "--level basic|extended|all and --quantize int8|fp16"
            )

    def describe(self) -> str:
        if self.auto is not None:
            return f"auto, at most {self.auto:.2%} of predictions changed"
        return ", ".join(p for p in (self.quantize, self.level and f"level {self.level}") if p)


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
