"""Models, their immutable versions, and the artifacts (bytes) behind them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelplane.domain.signature import Signature

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
SOURCE_FORMATS = ("onnx", "sklearn", "torch", "keras", "tensorflow", "transformers")
# what detection finds, finer than the --format names users give
DETECTED_FORMATS = {
    "onnx": "onnx",
    "onnx-folder": "onnx",
    "sklearn": "sklearn",
    "torchscript": "torch",
    "torch-export": "torch",
    "keras": "keras",
    "keras-h5": "keras",
    "tensorflow": "tensorflow",
    "transformers": "transformers",
}


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid model name, or None when it is."""
    if NAME_RE.match(name):
        return None
    return (
        f"invalid model name {name!r}: use 1-63 lowercase letters, digits, '.', '_' or '-', "
        "starting with a letter or digit (for example 'iris' or 'fraud-v2')"
    )


def alias_problem(alias: str) -> str | None:
    if ALIAS_RE.match(alias) and not alias.isdigit():
        return None
    return (
        f"invalid alias {alias!r}: use 1-63 lowercase letters, digits, '_' or '-', starting with "
        "a letter (for example 'production')"
    )


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    """``KEY=VALUE`` items (tags, node labels) as a dict; raises ValueError naming the bad one.
    The key must be non-empty; the value may be empty; a later key wins."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"invalid {what} {item!r}: use KEY=VALUE, for example team=fraud")
        pairs[key.strip()] = value
    return pairs


@dataclass(frozen=True, slots=True)
class ModelRef:
    """``name``, ``name:version`` or ``name@alias``."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse a reference; raises ValueError with a message that shows valid forms."""
        hint = "expected NAME, NAME:VERSION or NAME@ALIAS (for example iris:2 or iris@production)"
        if "@" in text:
            name, _, alias = text.partition("@")
            if not name or not alias or alias_problem(alias):
                raise ValueError(f"invalid model reference {text!r}: {hint}")
            return cls(name, alias=alias)
        if ":" in text:
            name, _, version = text.partition(":")
            if not name or not version.isdigit() or int(version) < 1:
                raise ValueError(f"invalid model reference {text!r}: {hint}")
            return cls(name, version=int(version))
        if not text:
            raise ValueError(f"empty model reference: {hint}")
        return cls(text)

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


@dataclass(frozen=True, slots=True)
class Artifact:
    """Bytes in the blob store, named by their sha256."""

    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    description: str
    created_at: datetime
    latest_version: int | None = None
    aliases: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelVersion:
    model: str
    version: int
    artifact: Artifact
    source_format: str
    signature: Signature
    description: str
    tags: dict[str, str]
    created_by: str
    created_at: datetime
    parent: str | None = None
    aliases: tuple[str, ...] = ()
    source_digest: str | None = None
    report: dict[str, Any] | None = None
    input_stats: dict[str, Any] | None = None  # of the samples pushed with it, for input_guard
    samples_digest: str | None = None  # the samples pushed with it (a blob)

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


@dataclass(frozen=True, slots=True)
class Conversion:
    """A push of a non-ONNX model: converted, verified, then stored as a version."""

    id: str
    model: str
    source_format: str
    state: str  # running | succeeded | failed
    stage: str  # convert | verify | store | done
    created_at: datetime
    updated_at: datetime
    error: str | None = None
    report: dict[str, Any] | None = None
    version: int | None = None
