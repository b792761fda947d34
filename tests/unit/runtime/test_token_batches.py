"""Text models run their batches cut by tokens: short texts are not padded to the longest one
of the whole batch, and the answers come back in the texts' order, the same as in one run."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from modelplane.domain.signature import TOKENIZER_METADATA
from modelplane.runtime.onnx import OnnxRuntime
from modelplane.runtime.text import TokenizingRuntime

TEXTS = ["a", "a b c d e f g h i j k l", "b c", "d e f g", "h", "i j k l m n o p q r s t u v w"]


def summing_text_model() -> bytes:
    """embedding = the sum of the token ids a text was read as (padding masked out): [N, 1]."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        TEXTS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"])
    )
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["kept"]),
        helper.make_node("Cast", ["kept"], ["real"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["real", "axes"], ["embedding"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "sum",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["n", "s"])
         for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = TOKENIZER_METADATA, tokenizer.to_str()
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


class Counting(OnnxRuntime):
    def __init__(self, model: bytes) -> None:
        super().__init__(model)
        self.widths: list[tuple[int, int]] = []

    async def predict(self, inputs: Any, outputs: Any) -> Any:
        self.widths.append(inputs["input_ids"].shape)
        return await super().predict(inputs, outputs)


async def test_cut_by_tokens_gives_the_same_answers_in_order() -> None:
    model = summing_text_model()
    whole, cut = Counting(model), Counting(model)
    one_run, by_tokens = TokenizingRuntime(whole, 10_000), TokenizingRuntime(cut, 8)
    one_run.load()
    by_tokens.load()
    texts = np.array(TEXTS, dtype=object)
    expected = await one_run.predict({"text": texts}, ["embedding", "token_count"])
    got = await by_tokens.predict({"text": texts}, ["embedding", "token_count"])
    assert np.array_equal(got["embedding"], expected["embedding"])
    assert list(got["token_count"]) == [len(t.split()) for t in TEXTS]
    assert whole.widths == [(6, 15)]  # every text padded to the longest
    assert len(cut.widths) > 1  # several runs, each within the budget or one text
    assert all(rows * width <= 8 or rows == 1 for rows, width in cut.widths)
    assert sum(rows for rows, _ in cut.widths) == len(TEXTS)
