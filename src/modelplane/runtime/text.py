"""Models that take text: tokenization in the replica (the ``tokenizers`` library, no torch),
wrapped around the ONNX runtime. A model without tokenizer metadata passes straight through.

Asked for explicitly, the extra output ``token_count`` (INT64, one per input) says how many
tokens each text was read as, after truncation: what OpenAI's embeddings ``usage`` reports.

Batches are cut by tokens: the texts are sorted by length and run in groups whose padded size
(rows x longest) stays within ``max_batch_tokens``, so one long text does not make every short
one in its batch pay for its padding. Only models whose outputs have one row per text and no
sequence axis (embeddings, class scores) are regrouped; the others run as one batch."""

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


MAX_BATCH_TOKENS = 4096  # padded tokens in one run of a text model


class TokenizingRuntime:
    def __init__(self, inner: OnnxRuntime, max_batch_tokens: int = MAX_BATCH_TOKENS) -> None:
        self._inner = inner
        self._max_batch_tokens = max_batch_tokens
        self._regroup = False
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
        if spec is None:  # not a text model: calls go straight to the inner runtime
            self.predict = self._inner.predict  # type: ignore[method-assign]
            return
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(spec)
        self._inputs = [t.name for t in self._inner.signature.inputs]
        self.signature = Signature(
            (TensorSpec(TEXT_INPUT, "BYTES", (-1,)),), self._inner.signature.outputs
        )
        # one row per text, no sequence axis: results can be regrouped and put back in order
        self._regroup = all(
            len(t.shape) <= 2 and all(d > 0 for d in t.shape[1:])
            for t in self._inner.signature.outputs
        )

    def _tokenize(self, texts: np.ndarray) -> Arrays:
        if texts.ndim != 1:
            raise InvalidInput(f"input {TEXT_INPUT!r} must be a 1-D list of strings")
        assert self._tokenizer is not None  # without it, load() routed predict to the inner one
        encoded = self._tokenizer.encode_batch([str(t) for t in texts])
        fields = {
            "input_ids": [e.ids for e in encoded],
            "attention_mask": [e.attention_mask for e in encoded],
            "token_type_ids": [e.type_ids for e in encoded],
        }
        return {name: np.array(fields[name], dtype=np.int64) for name in self._inputs}

    async def predict(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> Arrays:
        feeds = self._tokenize(inputs[TEXT_INPUT])
        wanted = [name for name in outputs if name != TOKEN_COUNT]
        lengths = feeds["attention_mask"].sum(axis=1)
        if self._regroup and wanted and feeds["attention_mask"].size > self._max_batch_tokens:
            results = await self._by_tokens(feeds, lengths, wanted)
        else:
            results = await self._inner.predict(feeds, wanted)
        if len(wanted) < len(outputs):
            results[TOKEN_COUNT] = lengths.astype(np.int64)
        return results

    async def _by_tokens(self, feeds: Arrays, lengths: np.ndarray, wanted: Sequence[str]) -> Arrays:
        """Run shortest first, in groups within the token budget; results in the texts' order."""
        order = np.argsort(lengths, kind="stable")
        groups: list[np.ndarray] = []
        start = 0
        for end in range(1, len(order) + 1):
            longest = int(lengths[order[end - 1]])
            if end - start > 1 and (end - start) * longest > self._max_batch_tokens:
                groups.append(order[start : end - 1])
                start = end - 1
        groups.append(order[start:])
        parts: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
        for rows in groups:
            width = max(1, int(lengths[rows].max()))
            sub = {name: array[rows, :width] for name, array in feeds.items()}
            found = await self._inner.predict(sub, wanted)
            for name in wanted:
                parts[name].append(found[name])
        back = np.argsort(np.concatenate(groups), kind="stable")
        return {name: np.concatenate(parts[name])[back] for name in wanted}
