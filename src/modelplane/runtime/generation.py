"""Language models with iteration-level continuous batching, on ONNX Runtime.

The model is the one onnxruntime-genai's builder writes (GroupQueryAttention with a KV cache
shared between past and present). Each stream owns a row (a *slot*) of one preallocated KV
cache per layer; every engine step runs the model once over the rows decoding (one token
each, each at its own position), so concurrent streams share each step. New streams join
between steps and finished ones leave; a prompt is prefilled in chunks between decoding steps,
so a long prompt holds the running streams up for one chunk at a time, not for all of it.

Why not onnxruntime-genai's ``Engine``: on CPU its batch is static (0.18, measured: requests
arriving mid-batch wait for all of it, at most four run); dynamic batching needs paged
attention, built only for CUDA and WebGPU (see docs/architecture.md).

One thread owns the session and caches (``_EngineThread``); the loop hands it turns to start or
cancel and gets each step's decoded tokens back in one call per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelplane.errors import InvalidInput, ModelplaneError
from modelplane.telemetry.histogram import Histogram

log = logging.getLogger("modelplane.replica")
DEFAULT_MAX_BATCH = 16
PREFILL_CHUNK = 64  # prompt tokens prefilled between two decoding steps
MIN_CACHE = 64  # positions the KV cache starts with
MIN_TEMPERATURE = 1e-5  # below it sampling is greedy (and dividing by it would overflow)
PREFILL_BATCH = 512  # prompt tokens read together in one run, over several streams


@dataclass(frozen=True, slots=True)
class Sampling:
    """How one completion is drawn: greedy when ``temperature`` is 0."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # generated before end-of-sequence may end the turn
    logprobs: bool = False


@dataclass(slots=True)
class Step:
    """What one engine step gave a turn: new text (complete UTF-8), its token ids, their
    log-probabilities when asked (``(token text, logprob, top token text, top logprob)``), and,
    on the last step, why it ended."""

    text: str
    tokens: list[int]
    finish: str | None = None  # "stop" | "length" | "error"
    logprobs: list[tuple[str, float, str, float]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Prompt:
    ids: np.ndarray
    text: str


@dataclass(frozen=True, slots=True)
class Occupancy:
    """The engine now: turns holding a slot, turns waiting for one, tokens the slots cache."""

    running: int = 0
    waiting: int = 0
    cached: int = 0


class GenerationStats:
    """Counters the replica reports (STATS) and the control plane turns into metrics."""

    def __init__(self) -> None:
        self.step_sizes: Counter[int] = Counter()  # streams advanced per decoding step
        self.tokens_in = 0
        self.tokens_out = 0
        self.first_token = Histogram()  # seconds from submission to the first token
        self.inter_token = Histogram()  # seconds between a stream's consecutive tokens
        self.finished = 0
        self.cancelled = 0

    def report(self, occupancy: Occupancy, capacity_tokens: int) -> dict[str, Any]:
        return {
            "step_sizes": {str(k): v for k, v in sorted(self.step_sizes.items())},
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "running": occupancy.running,
            "waiting": occupancy.waiting,
            "finished": self.finished,
            "cancelled": self.cancelled,
            "kv_cache_usage": occupancy.cached / capacity_tokens if capacity_tokens else 0.0,
            "first_token_seconds": self.first_token.snapshot(),
            "inter_token_seconds": self.inter_token.snapshot(),
        }


class Detokenizer:
    """Token ids to text as they come, never splitting a multi-byte character: text is given
    out only once its bytes are whole."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def add(self, token: int) -> str:
        self._ids.append(token)
        before = self._tokenizer.decode(self._ids[self._prefix : self._read])
        after = self._tokenizer.decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return str(after[len(before) :])
        return ""


@dataclass(eq=False, slots=True)
class _Turn:
    ids: np.ndarray
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Step] = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    # engine thread only
    slot: int = -1
    cached: int = 0  # tokens in this turn's KV row
    generated: int = 0
    next_token: int = -1  # sampled, not yet fed to the model
    rng: np.random.Generator | None = None
    text: Detokenizer | None = None
    cancelled: bool = False


class _Decoder:
    """The ONNX model and its KV caches: ``run`` feeds tokens for a range of slots."""

    def __init__(self, folder: Path, max_batch: int, threads: int) -> None:
        import onnxruntime as ort

        doc = json.loads((folder / "genai_config.json").read_text())["model"]
        decoder = doc["decoder"]
        self.context = int(doc["context_length"])
        eos = doc.get("eos_token_id", [])
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.pad = int(doc.get("pad_token_id", next(iter(self.eos), 0)) or 0)
        self.layers = int(decoder["num_hidden_layers"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(folder / decoder["filename"]), options,
                                             providers=["CPUExecutionProvider"])  # fmt: skip
        names = decoder["inputs"]
        self._past = [(names["past_key_names"] % i, names["past_value_names"] % i)
                      for i in range(self.layers)]  # fmt: skip
        outs = decoder["outputs"]
        self._present = [(outs["present_key_names"] % i, outs["present_value_names"] % i)
                         for i in range(self.layers)]  # fmt: skip
        self._rows = max_batch
        self._heads = int(decoder["num_key_value_heads"])
        self._head_size = int(decoder["head_size"])
        # past and present share these buffers: the model writes each new key in place. They
        # hold as many positions as the longest stream needs (grown by doubling, up to the
        # context), since attention's work grows with the buffer's length, not the mask's
        self._cache: list[tuple[np.ndarray, np.ndarray]] = []
        self._length = 0
        self._fit(MIN_CACHE)
        self.cache_bytes = (
            2 * self.layers * max_batch * self._heads * self.context * self._head_size * 4
        )

    def _fit(self, length: int) -> None:
        """Room for ``length`` positions in every row (what is cached is kept)."""
        if length <= self._length:
            return
        grown = min(self.context, max(MIN_CACHE, 1 << (length - 1).bit_length()))
        shape = (self._rows, self._heads, grown, self._head_size)
        old, kept = self._cache, self._length
        self._cache = []
        for i in range(self.layers):
            key, value = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
            if old:
                key[:, :, :kept] = old[i][0]
                value[:, :, :kept] = old[i][1]
            self._cache.append((key, value))
        self._length = grown

    def shrink(self) -> None:
        """Back to the smallest cache (no stream holds anything)."""
        self._cache, self._length = [], 0
        self._fit(MIN_CACHE)

    def run(self, rows: slice, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Logits [rows, len, vocab] for ``ids`` [rows, len] after what each row holds; ``mask``
        [rows, total] marks each row's cached tokens and these."""
        self._fit(mask.shape[1])
        binding = self._session.io_binding()
        binding.bind_output("logits", "cpu")
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        for (past_k, past_v), (out_k, out_v), (key, value) in zip(
            self._past, self._present, self._cache, strict=True
        ):
            for past, out, whole in ((past_k, out_k, key), (past_v, out_v, value)):
                buffer = whole[rows]  # rows are outermost: a contiguous view
                dims = list(buffer.shape)
                binding.bind_input(past, "cpu", 0, np.float32, dims, buffer.ctypes.data)
                binding.bind_output(out, "cpu", 0, np.float32, dims, buffer.ctypes.data)
        self._session.run_with_iobinding(binding)
        logits: np.ndarray = binding.copy_outputs_to_cpu()[0]
        return logits


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum())
    return result


def _sample(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    if sampling.temperature < MIN_TEMPERATURE:  # 0, or so close that it is greedy anyway
        return int(logits.argmax())
    scaled = logits.astype(np.float64) / sampling.temperature
    probs = np.exp(scaled - scaled.max())
    total = probs.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("the model's logits are not numbers")
    probs /= total
    if sampling.top_p < 1.0:
        order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] < sampling.top_p  # the first always stays
        kept = np.zeros_like(probs)
        kept[order[keep]] = probs[order[keep]]
        probs = kept / kept.sum()
    return int(rng.choice(len(probs), p=probs))


class _EngineThread(threading.Thread):
    def __init__(self, decoder: _Decoder, tokenizer: Any, max_batch: int,
                 stats: GenerationStats) -> None:  # fmt: skip
        super().__init__(name="modelplane-engine", daemon=True)
        self._decoder = decoder
        self._tokenizer = tokenizer
        self._stats = stats
        self._wake = threading.Condition()
        self._incoming: deque[_Turn] = deque()
        self._cancels: deque[_Turn] = deque()
        self._waiting: deque[_Turn] = deque()
        self._slots: list[_Turn | None] = [None] * max_batch
        self._stopping = False

    # ---- from the event loop -------------------------------------------------------------
    def submit(self, turn: _Turn) -> None:
        with self._wake:
            self._incoming.append(turn)
            self._wake.notify()

    def cancel(self, turn: _Turn) -> None:
        with self._wake:
            self._cancels.append(turn)
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()

    # ---- the engine thread -----------------------------------------------------------------
    def occupancy(self) -> Occupancy:
        """Read from the event loop's thread: only lengths and a copy of the slot list."""
        held = [t for t in list(self._slots) if t is not None]
        waiting = len(self._waiting) + len(self._incoming)
        return Occupancy(len(held), waiting, sum(t.cached for t in held))

    def _busy(self) -> bool:
        return bool(self._waiting) or any(t is not None for t in self._slots)

    def run(self) -> None:
        while True:
            with self._wake:
                while not (self._incoming or self._cancels or self._busy() or self._stopping):
                    self._wake.wait()
                if self._stopping:
                    return
                if not self._busy() and self._incoming:
                    self._decoder.shrink()  # idle: give the grown cache back
                self._waiting.extend(self._incoming)
                self._incoming.clear()
                cancels, self._cancels = list(self._cancels), deque()
            try:
                for turn in cancels:
                    self._cancel(turn)
                self._admit()
                self._prefill()
                self._decode()
            except Exception:  # the thread must live on: fail the turns it holds, not itself
                log.exception("the language model failed a step")
                for turn in [t for t in self._slots if t is not None]:
                    self._release(turn, Step("", [], "error"))

    def _cancel(self, turn: _Turn) -> None:
        turn.cancelled = True
        if turn.slot >= 0:
            self._release(turn, None)
            self._stats.cancelled += 1
        elif turn in self._waiting:
            self._waiting.remove(turn)
            self._stats.cancelled += 1

    def _admit(self) -> None:
        while self._waiting and None in self._slots:
            turn = self._waiting.popleft()
            turn.slot = self._slots.index(None)  # the lowest free row keeps batches compact
            self._slots[turn.slot] = turn
            seed = turn.sampling.seed
            turn.rng = np.random.default_rng(None if seed is None else seed % (1 << 64))
            turn.text = Detokenizer(self._tokenizer)

    def _prefill(self) -> None:
        """Prompt chunks, oldest first, up to PREFILL_CHUNK tokens in all: a long prompt is
        read a chunk per step. Short prompts that arrived together (in neighbouring slots) are
        read in one run of the model, padded on the right."""
        pending = sorted((t for t in self._slots if t is not None and t.next_token < 0),
                         key=lambda t: t.submitted)  # fmt: skip
        together = self._fresh_run(pending)
        if together:
            self._prefill_together(together)
            pending = [t for t in pending if t not in together]
        budget = PREFILL_CHUNK
        for turn in pending:
            if budget <= 0:
                return
            chunk = turn.ids[turn.cached : turn.cached + budget]
            end = turn.cached + len(chunk)
            budget -= len(chunk)
            mask = np.ones((1, end), np.int64)
            rows = slice(turn.slot, turn.slot + 1)
            logits = self._decoder.run(rows, chunk[None, :], mask)
            turn.cached = end
            if end == len(turn.ids):  # the whole prompt is read: its first token
                self._emit({turn: logits[0, -1]})

    def _fresh_run(self, pending: list[_Turn]) -> list[_Turn]:
        """The longest run of neighbouring slots whose turns have read nothing of prompts short
        enough to be read whole (at most PREFILL_BATCH tokens in all); fewer than two: none."""
        fresh = {t.slot: t for t in pending if t.cached == 0 and len(t.ids) <= PREFILL_CHUNK}
        best: list[_Turn] = []
        for start in sorted(fresh):
            if start - 1 in fresh:
                continue
            run, total, slot = [], 0, start
            while slot in fresh and total + len(fresh[slot].ids) <= PREFILL_BATCH:
                run.append(fresh[slot])
                total += len(fresh[slot].ids)
                slot += 1
            if len(run) > len(best):
                best = run
        return best if len(best) >= 2 else []

    def _prefill_together(self, turns: list[_Turn]) -> None:
        """Whole prompts of neighbouring slots in one run, right-padded: each row's mask covers
        its own tokens, and its first token comes from its own last position."""
        first, width = turns[0].slot, max(len(t.ids) for t in turns)
        ids = np.full((len(turns), width), self._decoder.pad, np.int64)
        mask = np.zeros((len(turns), width), np.int64)
        for row, turn in enumerate(turns):
            ids[row, : len(turn.ids)] = turn.ids
            mask[row, : len(turn.ids)] = 1
        logits = self._decoder.run(slice(first, first + len(turns)), ids, mask)
        for turn in turns:
            turn.cached = len(turn.ids)
        self._emit({t: logits[row, len(t.ids) - 1] for row, t in enumerate(turns)})

    def _decode(self) -> None:
        """One token for every turn past its prompt, all in one run of the model."""
        decoding = [t for t in self._slots if t is not None and t.next_token >= 0]
        if not decoding:
            return
        rows = max(t.slot for t in decoding) + 1
        # every occupied row in the run writes one key at its mask's end: a row still reading
        # its prompt must get its whole mask, or that key lands inside what it has cached
        width = max(t.cached for t in self._slots[:rows] if t is not None) + 1
        ids = np.full((rows, 1), self._decoder.pad, np.int64)
        mask = np.zeros((rows, width), np.int64)
        mask[:, 0] = 1  # rows not decoding now write one throwaway key at their next position
        for row, other in enumerate(self._slots[:rows]):
            if other is not None and other.next_token < 0:
                mask[row, : other.cached + 1] = 1
        for turn in decoding:
            ids[turn.slot, 0] = turn.next_token
            mask[turn.slot, : turn.cached + 1] = 1
        logits = self._decoder.run(slice(0, rows), ids, mask)
        for turn in decoding:
            turn.cached += 1
        self._stats.step_sizes[len(decoding)] += 1
        self._emit({t: logits[t.slot, -1] for t in decoding})

    def _emit(self, logits: dict[_Turn, np.ndarray]) -> None:
        """Sample each turn's next token, and hand what it means to the event loop."""
        for turn, row in logits.items():
            try:
                self._emit_one(turn, row)
            except Exception:  # one turn's failure (e.g. logits that are not numbers) is its own
                log.exception("the language model failed a request")
                self._release(turn, Step("", [], "error"))

    def _emit_one(self, turn: _Turn, row: np.ndarray) -> None:
        assert turn.rng is not None
        assert turn.text is not None
        sampling = turn.sampling
        if turn.generated < sampling.min_tokens:
            row = row.copy()
            row[list(self._decoder.eos)] = -np.inf
        token = _sample(row, sampling, turn.rng)
        if token in self._decoder.eos:
            self._release(turn, Step("", [], "stop"))
            return
        turn.generated += 1
        self._stats.tokens_out += 1
        step = Step(turn.text.add(token), [token])
        if sampling.logprobs:
            lp = _log_softmax(row.astype(np.float64))
            top = int(lp.argmax())
            step.logprobs.append((self._tokenizer.decode([token]), float(lp[token]),
                                  self._tokenizer.decode([top]), float(lp[top])))  # fmt: skip
        if turn.generated >= sampling.max_tokens or turn.cached + 1 >= self._decoder.context:
            step.finish = "length"
            self._release(turn, step)
            return
        turn.next_token = token
        self._post(turn, step)

    def _release(self, turn: _Turn, last: Step | None) -> None:
        if turn.slot >= 0 and self._slots[turn.slot] is turn:
            self._slots[turn.slot] = None
            if last is not None:
                self._stats.finished += 1
        turn.slot = -1
        if last is not None:
            self._post(turn, last)

    @staticmethod
    def _post(turn: _Turn, step: Step) -> None:
        if turn.cancelled:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the replica is stopping
            turn.loop.call_soon_threadsafe(turn.queue.put_nowait, step)


class GenerationRuntime:
    """A causal language model from a bundle folder (``genai_config.json``, the ONNX model,
    ``tokenizer.json``, the chat template)."""

    def __init__(self, folder: Path, max_batch: int = DEFAULT_MAX_BATCH, threads: int = 1) -> None:
        self._folder = folder
        self.max_batch = max_batch
        self._threads = threads
        self.stats = GenerationStats()
        self.context_length = 0
        self.cache_bytes = 0
        self._tokenizer: Any = None
        self._template: Any = None
        self._special: dict[str, str] = {}
        self._thread: _EngineThread | None = None

    def load(self) -> None:
        from tokenizers import Tokenizer

        decoder = _Decoder(self._folder, self.max_batch, self._threads)
        self.context_length = decoder.context
        self.cache_bytes = decoder.cache_bytes
        self._tokenizer = Tokenizer.from_file(str(self._folder / "tokenizer.json"))
        self._template, self._special = _chat_template(self._folder)
        self._thread = _EngineThread(decoder, self._tokenizer, self.max_batch, self.stats)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.stop()

    def report(self) -> dict[str, Any]:
        capacity = self.max_batch * self.context_length
        occupancy = self._thread.occupancy() if self._thread is not None else Occupancy()
        return {**self.stats.report(occupancy, capacity), "max_batch": self.max_batch,
                "context_length": self.context_length,
                "kv_cache_bytes": self.cache_bytes}  # fmt: skip

    def encode(self, text: str) -> Prompt:
        ids = np.asarray(self._tokenizer.encode(text).ids, dtype=np.int64)
        if not len(ids):
            raise InvalidInput("the prompt is empty after tokenization")
        return Prompt(ids, text)

    def chat_prompt(self, messages: list[dict[str, str]]) -> Prompt:
        if self._template is None:
            raise InvalidInput(
                "this model has no chat template; use /v1/completions with a prompt instead"
            )
        try:
            text = self._template.render(messages=messages, add_generation_prompt=True,
                                         **self._special)  # fmt: skip
        except Exception as exc:
            raise InvalidInput(f"the model's chat template refused these messages: {exc}") from None
        return self.encode(text)

    def check_length(self, prompt: Prompt, max_tokens: int | None) -> int:
        """The tokens a completion may generate; a clear 400 when the prompt leaves no room."""
        room = self.context_length - len(prompt.ids)
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            asked = f" + max_tokens {max_tokens}" if max_tokens is not None else ""
            raise InvalidInput(
                f"this model's context is {self.context_length} tokens; the prompt has "
                f"{len(prompt.ids)}{asked}; shorten the prompt or lower max_tokens"
            )
        return max_tokens if max_tokens is not None else room

    async def generate(self, prompt: Prompt, sampling: Sampling) -> AsyncGenerator[Step, None]:
        """The completion's steps, as the engine makes them. Leaving the iteration early (the
        client went away, a stop sequence) cancels the turn, which frees its slot at once."""
        if self._thread is None:
            raise ModelplaneError("the model is not loaded")
        stats = self.stats
        turn = _Turn(prompt.ids, sampling, asyncio.get_running_loop())
        stats.tokens_in += len(prompt.ids)
        self._thread.submit(turn)
        last = 0.0
        done = False
        try:
            while not done:
                step = await turn.queue.get()
                if step.tokens:
                    now = time.perf_counter()
                    if last:
                        stats.inter_token.observe((now - last) / len(step.tokens))
                    else:
                        stats.first_token.observe(now - turn.submitted)
                    last = now
                done = step.finish is not None
                yield step
        finally:
            if not done:
                self._thread.cancel(turn)


def greedy(folder: Path, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (up to ``tokens`` each, ending at end-of-sequence,
    which is included) by the model in ``folder``, through the decoder the engine uses: the
    conversion's parity check."""
    decoder = _Decoder(folder, 1, 1)
    outputs = []
    for prompt in prompts:
        feed = np.asarray([prompt], np.int64)
        produced: list[int] = []
        while len(produced) < tokens:
            mask = np.ones((1, len(prompt) + len(produced)), np.int64)
            logits = decoder.run(slice(0, 1), feed, mask)
            produced.append(int(logits[0, -1].argmax()))
            if produced[-1] in decoder.eos:
                break
            feed = np.asarray([[produced[-1]]], np.int64)
        outputs.append(produced)
    return outputs


def _chat_template(folder: Path) -> tuple[Any, dict[str, str]]:
    """The model's chat template, compiled in Jinja's sandbox (it came with an upload), and the
    special tokens templates refer to."""
    config: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").exists():
        config = json.loads((folder / "tokenizer_config.json").read_text())
    source = config.get("chat_template")
    if (folder / "chat_template.jinja").exists():
        source = (folder / "chat_template.jinja").read_text()
    if not isinstance(source, str):
        return None, {}
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    special = {k: v for k, v in config.items()
               if k in ("bos_token", "eos_token", "pad_token", "unk_token")
               and isinstance(v, str)}  # fmt: skip
    return env.from_string(source), special
