"""Streamed text never splits a character: a byte-level tokenizer cuts an emoji into several
tokens, and the text comes out whole once its last byte has."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from modelplane.runtime.generation import Detokenizer


def byte_level() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator(["plain words and more plain words"] * 10, trainer)
    return tokenizer


def test_an_emoji_split_over_tokens_arrives_whole() -> None:
    tokenizer = byte_level()
    text = "go 🚀 now, café"
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text.split())  # the emoji and the é are several byte tokens
    stream = Detokenizer(tokenizer)
    pieces = [stream.add(i) for i in ids]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # held back while a character was incomplete
