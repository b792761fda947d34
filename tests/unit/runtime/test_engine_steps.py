"""The engine's decoding step gives every row in the run its whole mask: a row still reading a
long prompt writes its step key past what it has cached, never inside it."""

from __future__ import annotations

import asyncio

import numpy as np

from modelplane.runtime.generation import GenerationStats, Sampling, _EngineThread, _Turn


class RecordingDecoder:
    """Stands in for the ONNX session: records what each run is given."""

    context, pad, eos = 256, 0, {2}

    def __init__(self) -> None:
        self.runs: list[tuple[slice, np.ndarray, np.ndarray]] = []

    def run(self, rows: slice, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.runs.append((rows, ids, mask))
        return np.zeros((ids.shape[0], ids.shape[1], 8), np.float32)


class Bytes:
    def decode(self, ids: list[int]) -> str:
        return "".join(chr(97 + i % 26) for i in ids)


def turn(slot: int, cached: int, prompt: int, next_token: int) -> _Turn:
    made = _Turn(np.arange(prompt, dtype=np.int64), Sampling(max_tokens=50, temperature=0),
                 asyncio.new_event_loop())  # fmt: skip
    made.slot, made.cached, made.next_token = slot, cached, next_token
    made.rng = np.random.default_rng(0)
    return made


def test_a_row_reading_its_prompt_keeps_its_whole_mask_in_a_decoding_step() -> None:
    decoder = RecordingDecoder()
    engine = _EngineThread(decoder, Bytes(), 4, GenerationStats())  # type: ignore[arg-type]
    reading = turn(slot=0, cached=64, prompt=200, next_token=-1)  # one chunk of 200 read
    decoding = turn(slot=1, cached=20, prompt=5, next_token=7)
    engine._slots[0], engine._slots[1] = reading, decoding
    # what /metrics reports is read off the slots: two held, nothing waiting, 84 tokens cached
    occupancy = engine.occupancy()
    assert (occupancy.running, occupancy.waiting, occupancy.cached) == (2, 0, 84)
    engine._decode()
    [(rows, ids, mask)] = decoder.runs
    assert rows == slice(0, 2)
    assert mask[1].sum() == 21  # the decoding row: its 20 cached and this token
    assert mask[0].sum() == 65  # the reading row: all 64 cached, its throwaway key after them
    assert ids[1, 0] == 7
    for made in (reading, decoding):
        made.loop.close()
