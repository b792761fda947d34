"""The replica's side of a language model: GENERATE streams on a ``GenerationRuntime``.

A GENERATE payload is a JSON ``GenerationSpec`` (the gateway validated the OpenAI request and
wrote it); the replica applies the chat template, checks the context length, starts ``n``
turns and streams their text as PARTIAL frames ``{"index", "text", "tokens"}``; the final frame
is ``{"choices": [{"index", "finish_reason"}], "usage": {...}}``, or an error status.

Stop sequences end a completion and are cut from its text (as OpenAI does); text that could
still become a stop sequence is held back until it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from modelplane.errors import InvalidInput, ModelplaneError
from modelplane.protocol import frames, v2
from modelplane.runtime.generation import GenerationRuntime, Prompt, Sampling, Step
from modelplane.serving.planes import PlaneState

log = logging.getLogger("modelplane.replica")
Emit = Callable[[frames.ResponseFrame], None]
INLINE_PROMPT_BYTES = 4096  # requests larger than this build their prompt in a worker thread


class StopScanner:
    """Cuts a completion at its first stop sequence; holds back a tail that may start one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self._stops:
            return text
        pending = self._held + text
        cut = min((i for i in (pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held, self.stopped = "", True
            return pending[:cut]
        keep = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(pending)), 0, -1):
                if pending.endswith(stop[:size]):
                    keep = max(keep, size)
                    break
        self._held = pending[len(pending) - keep :]
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held


def _spec_sampling(doc: dict[str, Any], max_tokens: int, index: int) -> Sampling:
    seed = doc.get("seed")
    temperature = doc.get("temperature")
    return Sampling(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else float(temperature),
        top_p=float(doc.get("top_p") or 1.0),
        seed=None if seed is None else int(seed) + index,  # n choices: n different draws
        stop=tuple(doc.get("stop") or ()),
        min_tokens=min(int(doc.get("min_tokens") or 0), max_tokens),
        logprobs=bool(doc.get("logprobs")),
    )


class GenerationPlane(PlaneState):
    """Serves one language model version under a public name."""

    def __init__(
        self,
        name: str,
        version: str,
        runtime: GenerationRuntime,
        request_log: Callable[[str, str | None, str, Any], None] | None = None,
    ) -> None:
        super().__init__(name, version, runtime)
        self._runtime: GenerationRuntime = runtime
        self._request_log = request_log

    def stats(self) -> dict[str, Any]:
        return {
            "inference_count": self.request_seconds.count,
            "failure_count": self.failure_count,
            "execution_count": sum(self._runtime.stats.step_sizes.values()),
            "batch_sizes": {},
            "load_seconds": self.load_seconds,
            "request_seconds": self.request_seconds.snapshot(),
            "generation": self._runtime.report(),
        }

    async def handle(self, frame: frames.RequestFrame) -> frames.ResponseFrame:
        if frame.op == frames.READY:
            return frames.ResponseFrame(frame.id, 200 if self.ready else 503, None, b"")
        if frame.op == frames.STATS:
            return frames.ResponseFrame(frame.id, 200, None, orjson.dumps(self.stats()))
        message = (f"model {self.name!r} is a language model; call it through the OpenAI API: "
                   "POST /v1/chat/completions or /v1/completions")  # fmt: skip
        return frames.ResponseFrame(frame.id, 400, None, v2.error_body(message, "invalid_argument"))

    def _prompt(self, doc: dict[str, Any]) -> Prompt:
        if doc.get("messages") is not None:
            return self._runtime.chat_prompt(doc["messages"])
        prompt = doc.get("prompt")
        if not isinstance(prompt, str):
            raise InvalidInput("a generation needs a prompt or messages")
        return self._runtime.encode(prompt)

    async def generate(self, frame: frames.RequestFrame, emit: Emit) -> frames.ResponseFrame:
        started = time.perf_counter()
        status, error = 200, None
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        try:
            doc = orjson.loads(frame.payload)
            if len(frame.payload) > INLINE_PROMPT_BYTES:  # long prompts are built off the loop
                prompt = await asyncio.to_thread(self._prompt, doc)
            else:
                prompt = self._prompt(doc)
            budget = self._runtime.check_length(prompt, doc.get("max_tokens"))
            n = int(doc.get("n") or 1)
            finishes: dict[int, str] = {}
            counts = [0] * n
            async with asyncio.TaskGroup() as group:
                for i in range(n):
                    sampling = _spec_sampling(doc, budget, i)
                    group.create_task(self._choice(frame.id, i, prompt, sampling, emit,
                                                   finishes, counts))  # fmt: skip
            usage = {"prompt_tokens": len(prompt.ids), "completion_tokens": sum(counts)}
            if "error" in finishes.values():
                raise ModelplaneError("the model failed while generating; retry the request")
            body = orjson.dumps({
                "choices": [{"index": i, "finish_reason": finishes.get(i, "stop")}
                            for i in range(n)],
                "usage": usage,
            })  # fmt: skip
            return frames.ResponseFrame(frame.id, 200, None, body)
        except ModelplaneError as exc:
            status, error = exc.status, exc.message
            return frames.ResponseFrame(frame.id, exc.status, None,
                                        v2.error_body(exc.message, exc.code))  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            status, error = 400, f"malformed generation request: {exc}"
            return frames.ResponseFrame(frame.id, 400, None,
                                        v2.error_body(error, "invalid_argument"))  # fmt: skip
        except asyncio.CancelledError:
            status, error = 499, "the client went away"
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.request_seconds.observe(elapsed)
            if error is not None and status >= 500:
                self.failure_count += 1
            if self._request_log is not None:
                fields: dict[str, Any] = {"status": status, "ms": round(elapsed * 1e3, 3),
                                          **usage, "version": self.version}  # fmt: skip
                if error is not None:
                    fields["error"] = error
                level = "info" if status < 400 or status == 499 else "warning"
                self._request_log(level, frame.request_id, "generate", fields)

    async def _choice(
        self,
        frame_id: int,
        index: int,
        prompt: Prompt,
        sampling: Sampling,
        emit: Emit,
        finishes: dict[int, str],
        counts: list[int],
    ) -> None:
        scanner = StopScanner(sampling.stop)
        step: Step | None = None
        # closed on leaving: an early stop cancels the turn, and its slot is free at once
        async with contextlib.aclosing(self._runtime.generate(prompt, sampling)) as steps:
            async for step in steps:
                counts[index] += len(step.tokens)
                text = scanner.feed(step.text)
                if step.finish is not None:
                    text += scanner.flush()
                if text or step.tokens:
                    event: dict[str, Any] = {"index": index, "text": text, "tokens": step.tokens}
                    if step.logprobs:
                        event["logprobs"] = step.logprobs
                    emit(frames.ResponseFrame(frame_id, frames.PARTIAL, None,
                                              orjson.dumps(event)))  # fmt: skip
                if scanner.stopped:
                    finishes[index] = "stop"
                    return
        if step is not None and step.finish is not None:
            finishes[index] = step.finish
