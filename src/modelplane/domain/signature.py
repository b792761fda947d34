"""Tensor signatures: what a model version takes and gives, in V2 protocol terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ONNX metadata keys of a model that takes text: the tokenizer (tokenizers' JSON) and its
# maximum length. Such a model's served signature is one BYTES input named TEXT_INPUT.
TOKENIZER_METADATA = "modelplane.tokenizer"
MAX_LENGTH_METADATA = "modelplane.max_length"
TEXT_INPUT = "text"
# the extra output such a model gives when asked: tokens per text
TOKEN_COUNT = "token_count"  # noqa: S105  # nosec B105

# V2 datatype -> element size in bytes (BYTES is variable: 0).
DATATYPES: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BYTES": 0,
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor. ``shape`` uses -1 for a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True, slots=True)
class Signature:
    """What a version takes and gives. ``task`` names what it does beyond tensors in, tensors
    out: ``text-generation`` for a language model served through the OpenAI API."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    task: str = ""

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }
        if self.task:
            doc["task"] = self.task
        return doc

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec.from_dict(t) for t in data.get("inputs", [])),
            tuple(TensorSpec.from_dict(t) for t in data.get("outputs", [])),
            str(data.get("task", "")),
        )


TEXT_GENERATION = "text-generation"
# versions that take encoded files (BYTES elements are raw bytes, base64 in JSON)
IMAGE_CLASSIFICATION = "image-classification"
AUDIO_CLASSIFICATION = "audio-classification"
FILE_TASKS = frozenset({IMAGE_CLASSIFICATION, AUDIO_CLASSIFICATION})
# a language model's signature: a prompt in, text out (the names Triton's generate uses)
GENERATION_SIGNATURE = Signature(
    (TensorSpec("text_input", "BYTES", (1,)),),
    (TensorSpec("text_output", "BYTES", (-1,)),),
    TEXT_GENERATION,
)
