"""The Runtime contract: ``load`` and ``predict``; everything else has a default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from modelplane.domain import Signature


class Runtime(Protocol):
    """A loaded model. ``signature`` is valid after ``load``."""

    signature: Signature

    def load(self) -> None: ...

    def predict(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]: ...
