"""The OpenAI-compatible surface of the gateway (``/v1``), as a plain ASGI app in front of the
rest: same port, same keys and scopes as V2.

Chat and text completions go to a language model's replica as one GENERATE stream; its events
come back as OpenAI's objects, or as server-sent events exactly as OpenAI frames them when
``stream`` is set. A client that goes away cancels its generation at once. Embeddings are a V2
inference on a text encoder's replica, answered in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from modelplane.domain import Principal
from modelplane.domain.processing import LABEL_OUTPUT, SCORE_OUTPUT
from modelplane.domain.signature import FILE_TASKS, TEXT_GENERATION, TEXT_INPUT, TOKEN_COUNT
from modelplane.errors import ModelplaneError, NotFound, error_for_status
from modelplane.protocol import frames
from modelplane.protocol import openai as oa
from modelplane.security.limiter import Quotas
from modelplane.security.policy import Action, authorize
from modelplane.serving.access import visible_route, visible_routes
from modelplane.serving.asgi import (
    RequestIds,
    caller,
    clean_request_id,
    read_body,
    reply,
    too_large,
)
from modelplane.serving.gateway import Gateway
from modelplane.serving.routing import Route

log = logging.getLogger("modelplane.gateway")
EMBEDDING = "embedding"  # the output a text encoder's conversion names
JSON = b"application/json"


def _require_generative(route: Route) -> None:
    if route.signature.task != TEXT_GENERATION:
        raise oa.BadParameter(
            f"model {route.name!r} is not a language model; call it with POST "
            f"/v2/models/{route.name}/infer (or /v1/embeddings if it is a text encoder)",
            "model",
        )


class OpenAISurface:
    def __init__(
        self, app: ASGIApp, gateway: Gateway, max_body: int, quotas: Quotas | None = None
    ) -> None:
        self._app = app
        self._gateway = gateway
        self._quotas = quotas if quotas is not None else Quotas()  # keys' token budgets
        self._max_body = max_body
        self._started = int(time.time())
        self._ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self._app(scope, receive, send)
            return
        try:
            await self._dispatch(scope, receive, send, path.rstrip("/"))
        except ModelplaneError as exc:
            await _reply(send, exc.status, oa.error_from(exc))
        except Exception:
            log.exception("OpenAI request %s failed", path)
            await _reply(send, 500, oa.error_body(500, "internal error; see the server log"))

    def _request_id(self, scope: Scope) -> str:
        """The client's X-Request-Id when it sent a sane one, else a new id."""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                return clean_request_id(value) or self._ids.new()
        return self._ids.new()

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        who = caller(scope)
        authorize(who, Action.INFER)
        method = scope["method"]
        if path == "/v1/models" and method == "GET":
            routes = sorted(visible_routes(self._gateway, who), key=lambda r: r.name)
            await _reply(send, 200, oa.models_body([(r.name, self._started) for r in routes]))
            return
        if path.startswith("/v1/models/") and method == "GET":
            route = visible_route(self._gateway, who, path.removeprefix("/v1/models/"), None)
            await _reply(send, 200, orjson.dumps({"id": route.name, "object": "model",
                         "created": self._started, "owned_by": "modelplane"}))  # fmt: skip
            return
        handlers = {"/v1/chat/completions": self._chat, "/v1/completions": self._completion,
                    "/v1/embeddings": self._embeddings}  # fmt: skip
        handler = handlers.get(path)
        if handler is None or method != "POST":
            raise NotFound(f"no OpenAI route {method} {path}; see docs/api.md")
        body = await self._read_body(scope, receive)
        await handler(scope, receive, send, who, body)

    # ---- completions ------------------------------------------------------------------------
    async def _chat(
        self, scope: Scope, receive: Receive, send: Send, who: Principal, body: bytes
    ) -> None:
        request: oa.ChatCompletionRequest = oa.parse(oa.ChatCompletionRequest, body)
        route = visible_route(self._gateway, who, request.model, None)
        if route.signature.task in FILE_TASKS:
            await self._classify(scope, send, route, request)
            return
        _require_generative(route)
        # OpenAI's "developer" is what chat templates know as "system"
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in request.messages]  # fmt: skip
        spec = _spec(request, {"messages": messages}, request.limit(), request.logprobs)
        shape = _Shape(route.name, chat=True, n=request.n, logprobs=request.logprobs,
                       top=bool(request.top_logprobs))  # fmt: skip
        await self._generate(scope, receive, send, who, route, spec, request, shape)

    async def _completion(
        self, scope: Scope, receive: Receive, send: Send, who: Principal, body: bytes
    ) -> None:
        request: oa.CompletionRequest = oa.parse(oa.CompletionRequest, body)
        prompts = request.prompts()
        if len(prompts) != 1:
            raise oa.BadParameter("send one prompt per request (a list of one is fine)", "prompt")
        if request.echo and request.logprobs is not None:
            raise oa.BadParameter("echo with logprobs is not supported; drop one", "echo")
        route = visible_route(self._gateway, who, request.model, None)
        _require_generative(route)
        logprobs = request.logprobs is not None
        spec = _spec(request, {"prompt": prompts[0]}, request.max_tokens, logprobs)
        shape = _Shape(
            route.name,
            chat=False,
            n=request.n,
            logprobs=logprobs,
            top=bool(request.logprobs),
            echo=prompts[0] if request.echo else "",
        )
        await self._generate(scope, receive, send, who, route, spec, request, shape)

    async def _generate(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        who: Principal,
        route: Route,
        spec: dict[str, Any],
        request: oa.ChatCompletionRequest | oa.CompletionRequest,
        shape: _Shape,
    ) -> None:
        request_id = self._request_id(scope)
        shape.request_id = request_id
        shape.id = ("chatcmpl-" if shape.chat else "cmpl-") + request_id
        reserved = self._reserve(who, spec)
        events = self._gateway.generate(route, orjson.dumps(spec), request_id)
        # a client that goes away cancels the generation at once: the stream runs in a task
        # the disconnect watcher can cancel
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            work = self._stream(send, events, shape, include_usage)
        else:
            work = self._whole(send, events, shape)
        try:
            await _until_disconnected(work, receive)
        finally:  # what was generated counts against the key's token budget, finished or not
            self._quotas.spend(who, shape.tokens - reserved)

    def _reserve(self, who: Principal, spec: dict[str, Any]) -> int:
        """A key with a token budget: cap the completion to what is left of it, and set that
        aside while it runs (so concurrent requests cannot all spend the same tokens)."""
        left = self._quotas.tokens_left(who)
        if left is None:
            return 0
        n = int(spec.get("n") or 1)
        cap = max(1, left // n)
        spec["max_tokens"] = min(spec.get("max_tokens") or cap, cap)
        spec["min_tokens"] = min(int(spec.get("min_tokens") or 0), spec["max_tokens"])
        reserved: int = spec["max_tokens"] * n
        self._quotas.spend(who, reserved)
        return reserved

    async def _whole(
        self, send: Send, events: AsyncGenerator[list[frames.ResponseFrame], None], shape: _Shape
    ) -> None:
        texts = [""] * shape.n
        logprobs: list[list[oa.TokenLogprob]] = [[] for _ in range(shape.n)]
        async with contextlib.aclosing(events):
            async for batch in events:
                for event in _merged(batch, shape):
                    texts[event["index"]] += event["text"]
                    logprobs[event["index"]] += event.get("logprobs", [])
                if batch[-1].status != frames.PARTIAL:
                    doc = shape.whole(texts, logprobs, _final(batch[-1]))
                    await _reply(send, 200, orjson.dumps(doc), _headers(shape))
                    return

    async def _stream(
        self,
        send: Send,
        events: AsyncGenerator[list[frames.ResponseFrame], None],
        shape: _Shape,
        include_usage: bool,
    ) -> None:
        """SSE chunks as events arrive; a batch that arrived at once (the client fell behind)
        becomes one chunk per choice, not one per token."""
        begun = [False]  # whether the response has started (headers sent)
        try:
            await self._stream_batches(send, events, shape, include_usage, begun)
        except ModelplaneError as exc:
            if not begun[0]:
                raise  # nothing sent yet: an ordinary error response
            # the stream has begun (a replica went away mid-stream): end it with the error
            await _chunk(send, orjson.loads(oa.error_from(exc)))
            await _chunk_raw(send, oa.DONE, more=False)

    async def _stream_batches(
        self,
        send: Send,
        events: AsyncGenerator[list[frames.ResponseFrame], None],
        shape: _Shape,
        include_usage: bool,
        begun: list[bool],
    ) -> None:
        started = False
        async with contextlib.aclosing(events):
            async for batch in events:
                last = batch[-1]
                if not started and (len(batch) > 1 or last.status == frames.PARTIAL):
                    await self._open(send, shape, include_usage)
                    started = begun[0] = True
                for event in _merged(batch, shape):
                    if event["text"] or event.get("logprobs"):
                        await _chunk(send, shape.text_chunk(event, include_usage))
                if last.status == frames.PARTIAL:
                    continue
                if not started:  # an error before any token: an ordinary error response
                    final = _final(last)
                    await self._open(send, shape, include_usage)
                    begun[0] = True
                else:
                    try:
                        final = _final(last)
                    except ModelplaneError as exc:
                        await _chunk(send, orjson.loads(oa.error_from(exc)))
                        await _chunk_raw(send, oa.DONE, more=False)
                        return
                shape.count(final)
                for choice in final["choices"]:
                    await _chunk(send, shape.finish_chunk(choice, include_usage))
                if include_usage:
                    await _chunk(send, shape.usage_chunk(final["usage"]))
                await _chunk_raw(send, oa.DONE, more=False)
                return

    @staticmethod
    async def _open(send: Send, shape: _Shape, include_usage: bool) -> None:
        await _start_stream(send, shape)
        for i in range(shape.n):  # chat: each choice's first chunk names the role
            first = shape.first_chunk(i, include_usage)
            if first is not None:
                await _chunk(send, first)

    async def _classify(
        self, scope: Scope, send: Send, route: Route, request: oa.ChatCompletionRequest
    ) -> None:
        """An image or audio model in a chat: the files of the messages are classified; the
        reply lists each file's top labels, ``label: score`` a line."""
        if request.stream:
            raise oa.BadParameter("streaming is for language models; leave stream out", "stream")
        files = [f for m in request.messages for f in m.files()]
        if not files:
            raise oa.BadParameter(
                f"model {route.name!r} classifies files: send an image_url part (a data: URL) "
                "or an input_audio part",
                "messages",
            )
        spec = route.signature.inputs[0]
        body = orjson.dumps({"inputs": [{
            "name": spec.name, "datatype": "BYTES", "shape": [len(files)],
            "data": [base64.b64encode(f).decode() for f in files],
        }]})  # fmt: skip
        request_id = self._request_id(scope)
        result = await self._gateway.infer(route, body, None, request_id)
        doc = orjson.loads(result.body)
        if result.status != 200:
            raise error_for_status(result.status, str(doc.get("error", "the model failed")))
        outputs = {o["name"]: o for o in doc["outputs"]}
        k = outputs[LABEL_OUTPUT]["shape"][-1]
        labels, scores = outputs[LABEL_OUTPUT]["data"], outputs[SCORE_OUTPUT]["data"]
        answers = []
        for i in range(len(files)):
            rows = zip(labels[i * k : (i + 1) * k], scores[i * k : (i + 1) * k], strict=True)
            answers.append("\n".join(f"{label}: {score:.4f}" for label, score in rows))
        shape = _Shape(route.name, chat=True, n=1)
        shape.request_id, shape.id = request_id, "chatcmpl-" + request_id
        final = {"choices": [{"index": 0, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 0, "completion_tokens": 0}}  # fmt: skip
        reply = shape.whole(["\n\n".join(answers)], [[]], final)
        await _reply(send, 200, orjson.dumps(reply), _headers(shape))

    # ---- embeddings -------------------------------------------------------------------------
    async def _embeddings(
        self, scope: Scope, receive: Receive, send: Send, who: Principal, body: bytes
    ) -> None:
        request: oa.EmbeddingRequest = oa.parse(oa.EmbeddingRequest, body)
        route = visible_route(self._gateway, who, request.model, None)
        spec = route.signature.input(TEXT_INPUT)
        if spec is None or route.signature.output(EMBEDDING) is None:
            raise oa.BadParameter(
                f"model {request.model!r} is not a text encoder (it takes no text or gives no "
                "embedding); see docs/conversion.md for pushing one",
                "model",
            )
        texts = request.texts()
        v2_body = orjson.dumps({
            "inputs": [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [len(texts)],
                        "data": texts}],
            # the vectors come back as raw FP32 (the binary extension): no float text to parse
            "outputs": [{"name": EMBEDDING, "parameters": {"binary_data": True}},
                        {"name": TOKEN_COUNT}],
        })  # fmt: skip
        request_id = self._request_id(scope)
        result = await self._gateway.infer(route, v2_body, None, request_id)
        end = result.header_length if result.header_length is not None else len(result.body)
        doc = orjson.loads(result.body[:end])
        if result.status != 200:
            raise error_for_status(result.status, str(doc.get("error", "the model failed")))
        vectors, tokens = _embedding_outputs(doc, result.body[end:], len(texts))
        if request.dimensions is not None and request.dimensions != vectors.shape[1]:
            raise oa.BadParameter(
                f"model {request.model!r} gives {vectors.shape[1]} dimensions and cannot give "
                f"{request.dimensions}; leave dimensions out",
                "dimensions",
            )
        self._quotas.spend(who, tokens)
        out = oa.embeddings_body(route.name, vectors, request.encoding_format, tokens)
        await _reply(send, 200, out, [(b"x-request-id", request_id.encode())])

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self._max_body:
                raise too_large(int(value), self._max_body)  # before a byte of it is read
        return await read_body(receive, self._max_body)


def _merged(batch: list[frames.ResponseFrame], shape: _Shape) -> list[dict[str, Any]]:
    """The PARTIAL events of a batch, one per choice (text, tokens and log-probabilities
    joined in order), counted toward the request's tokens."""
    by_choice: dict[int, dict[str, Any]] = {}
    for frame in batch:
        if frame.status != frames.PARTIAL:
            continue
        event = orjson.loads(frame.payload)
        shape.tokens += len(event["tokens"])
        seen = by_choice.get(event["index"])
        if seen is None:
            by_choice[event["index"]] = event
        else:
            seen["text"] += event["text"]
            seen["tokens"] += event["tokens"]
            if event.get("logprobs"):
                seen["logprobs"] = seen.get("logprobs", []) + event["logprobs"]
    return list(by_choice.values())


def _embedding_outputs(doc: dict[str, Any], blob: bytes, count: int) -> tuple[np.ndarray, int]:
    """The vectors (binary FP32, or JSON data) and the token count of a V2 answer."""
    outputs = {o["name"]: o for o in doc.get("outputs", [])}
    if EMBEDDING not in outputs or TOKEN_COUNT not in outputs:
        raise ModelplaneError("the text encoder's answer lacks its embedding or token count")
    found = outputs[EMBEDDING]
    if "data" in found:
        vectors = np.asarray(found["data"], dtype=np.float32)
    else:  # the only binary output, so its bytes are the whole blob
        vectors = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    return vectors.reshape(count, -1), int(sum(outputs[TOKEN_COUNT]["data"]))


def _spec(
    request: oa.ChatCompletionRequest | oa.CompletionRequest,
    prompt: dict[str, Any],
    max_tokens: int | None,
    logprobs: bool,
) -> dict[str, Any]:
    """What the replica needs to generate: the prompt or messages and how to sample."""
    return {**prompt, "max_tokens": max_tokens, "temperature": request.temperature,
            "top_p": request.top_p, "seed": request.seed, "stop": request.stops(),
            "n": request.n, "min_tokens": request.min_tokens,
            "logprobs": logprobs}  # fmt: skip


def _final(frame: frames.ResponseFrame) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(frame.payload) if frame.payload else {}
    if frame.status != 200:
        raise error_for_status(frame.status, str(doc.get("error", "the model failed")))
    return doc


class _Shape:
    """One response's OpenAI objects: ids, names, the object type (chat or text), and whether
    they carry log-probabilities or echo the prompt."""

    def __init__(self, model: str, *, chat: bool, n: int, logprobs: bool = False,
                 top: bool = False, echo: str = "") -> None:  # fmt: skip
        self.model = model
        self.request_id = ""
        self.id = ""
        self.chat = chat
        self.n = n
        self.logprobs = logprobs
        self.top = top
        self.echo = echo
        self.created = oa.now()
        self.tokens = 0  # generated so far; prompt and completion once the final frame came
        self.offsets: dict[int, int] = {}  # characters streamed so far, per choice

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}  # fmt: skip

    def _logprobs(self, tokens: list[oa.TokenLogprob], offset: int) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        if self.chat:
            return oa.chat_logprobs(tokens, self.top)
        return oa.completion_logprobs(tokens, offset, self.top)

    def whole(self, texts: list[str], logprobs: list[list[oa.TokenLogprob]],
              final: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        self.count(final)
        reasons = {c["index"]: c["finish_reason"] for c in final["choices"]}
        choices = []
        for i, text in enumerate(texts):
            choice: dict[str, Any] = {"index": i,
                                      "logprobs": self._logprobs(logprobs[i], len(self.echo)),
                                      "finish_reason": reasons.get(i, "stop")}  # fmt: skip
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text, "refusal": None}
            else:
                choice["text"] = self.echo + text
            choices.append(choice)
        usage = final["usage"]
        doc = self._base("chat.completion" if self.chat else "text_completion")
        doc.update(choices=choices,
                   usage=oa.usage(usage["prompt_tokens"], usage["completion_tokens"]))  # fmt: skip
        return doc

    def _chunk(self, choice: dict[str, Any], include_usage: bool) -> dict[str, Any]:
        doc = self._base("chat.completion.chunk" if self.chat else "text_completion")
        doc["choices"] = [choice]
        if include_usage:
            doc["usage"] = None
        return doc

    def first_chunk(self, index: int, include_usage: bool) -> dict[str, Any] | None:
        """A chat choice's first chunk names the role; a completion's echoes the prompt."""
        if self.chat:
            choice = {"index": index, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}  # fmt: skip
        elif self.echo:
            choice = {"index": index, "text": self.echo, "logprobs": None,
                      "finish_reason": None}  # fmt: skip
        else:
            return None
        return self._chunk(choice, include_usage)

    def text_chunk(self, event: dict[str, Any], include_usage: bool) -> dict[str, Any]:
        index, text = event["index"], event["text"]
        # a completion's text_offset counts from the start of the whole text (echo included)
        logprobs = self._logprobs(
            event.get("logprobs", []), self.offsets.get(index, len(self.echo))
        )
        self.offsets[index] = self.offsets.get(index, len(self.echo)) + len(text)
        if self.chat:
            choice = {"index": index, "delta": {"content": text}, "logprobs": logprobs,
                      "finish_reason": None}  # fmt: skip
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}
        return self._chunk(choice, include_usage)

    def finish_chunk(self, final: dict[str, Any], include_usage: bool) -> dict[str, Any]:
        index, reason = final["index"], final["finish_reason"]
        if self.chat:
            choice = {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": index, "text": "", "logprobs": None, "finish_reason": reason}
        return self._chunk(choice, include_usage)

    def count(self, final: dict[str, Any]) -> None:
        """The tokens of the whole request, once its final frame says them."""
        usage = final.get("usage") or {}
        self.tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        doc = self._base("chat.completion.chunk" if self.chat else "text_completion")
        doc["choices"] = []
        doc["usage"] = oa.usage(usage["prompt_tokens"], usage["completion_tokens"])
        return doc


async def _until_disconnected(work: Any, receive: Receive) -> None:
    """Run ``work``; cancel it as soon as the client disconnects."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if not task.cancelled():
        task.result()


def _headers(shape: _Shape) -> list[tuple[bytes, bytes]]:
    return [(b"x-request-id", shape.request_id.encode())]


async def _reply(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await reply(send, status, body, JSON, extra)


async def _start_stream(send: Send, shape: _Shape) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
        (b"x-request-id", shape.request_id.encode()),
    ]})  # fmt: skip


async def _chunk(send: Send, doc: dict[str, Any]) -> None:
    await _chunk_raw(send, oa.sse(doc))


async def _chunk_raw(send: Send, data: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})
