"""Models that take text: tokenization in the replica (the ``tokenizers`` library, no torch),
wrapped around the ONNX runtime. A model without tokenizer metadata passes straight through.

Asked for explicitly, the extra output ``token_count`` (INT64, one per input) says how many
tokens each text was read as, after truncation: what OpenAI's embeddings ``usage`` reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from modelplane.domain import Signature, TensorSpec
from modelplane.domain.signature import TEXT_INPUT, TOKEN_COUNT, TOKENIZER_METADATA
from modelplane.errors import InvalidInput
from modelplane.runtime.base import Arrays
from modelplane.runtime.onnx import OnnxRuntime

if TYPE_CHECKING:
    from tokenizers import Tokenizer


class TokenizingRuntime:
    def __init__(self, inner: OnnxRuntime) -> None:
        self._inner = inner
        self._tokenizer: Tokenizer | None = None
        self._inputs: list[str] = []
        self.signature = inner.signature

    @property
    def metadata(self) -> dict[str, str]:
        return self._inner.metadata

    def load(self) -> None:
        self._inner.load()
        self.signature = self._inner.signature
        spec = self._inner.metadata.get(TOKENIZER_METADATA)
        if spec is None:
            return
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(spec)
        self._inputs = [t.name for t in self._inner.signature.inputs]
        self.signature = Signature(
            (TensorSpec(TEXT_INPUT, "BYTES", (-1,)),), self._inner.signature.outputs
        )

    def _tokenize(self, texts: np.ndarray) -> Arrays:
        if texts.ndim != 1:
            raise InvalidInput(f"input {TEXT_INPUT!r} must be a 1-D list of strings")
        assert self._tokenizer is not None
        encoded = self._tokenizer.encode_batch([str(t) for t in texts])
        fields = {
            "input_ids": [e.ids for e in encoded],
            "attention_mask": [e.attention_mask for e in encoded],
            "token_type_ids": [e.type_ids for e in encoded],
        }
        return {name: np.array(fields[name], dtype=np.int64) for name in self._inputs}

    async def predict(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> Arrays:
        if self._tokenizer is None:
            return await self._inner.predict(inputs, outputs)
        feeds = self._tokenize(inputs[TEXT_INPUT])
        wanted = [name for name in outputs if name != TOKEN_COUNT]
        results = await self._inner.predict(feeds, wanted)
        if len(wanted) < len(outputs):
            results[TOKEN_COUNT] = feeds["attention_mask"].sum(axis=1).astype(np.int64)
        return results
