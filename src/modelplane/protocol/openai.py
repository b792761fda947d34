"""The OpenAI API's wire shapes: requests validated strictly (an unknown or unsupported parameter
is a 400 that names it, never silently ignored), responses and stream chunks built as OpenAI
frames them, and OpenAI's error object.

Pure: no I/O. The gateway (``serving/openai.py``) turns a validated request into a
``GenerationSpec`` for a replica and the replica's events back into these shapes.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelplane.errors import InvalidInput, ModelplaneError

MAX_N = 8
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_TOKENS = 1 << 24  # far above any context; keeps numbers inside 64 bits downstream
SEED = (-(1 << 63), (1 << 63) - 1)

# modelplane error code -> OpenAI's error ``type`` and ``code``
_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
    503: ("server_error", "model_not_ready"),
    504: ("server_error", "timeout"),
}


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    kind, code = _ERROR_TYPES.get(status, ("server_error", None))
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param,
                                   "code": code}})  # fmt: skip


def error_from(exc: ModelplaneError) -> bytes:
    return error_body(exc.status, exc.message, getattr(exc, "param", None))


class BadParameter(InvalidInput):
    """A 400 that names the parameter (OpenAI's ``param``)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class ImageUrl(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


class InputAudio(_Strict):
    data: str  # base64
    format: Literal["wav", "mp3", "flac", "ogg"] = "wav"


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


Part = Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]


def inline_file(part: ImagePart | AudioPart) -> bytes:
    """The bytes of an image or audio part. Only inline data is taken: a remote URL is never
    fetched (the server would become a client of any address a caller names)."""
    if isinstance(part, AudioPart):
        encoded = part.input_audio.data
    else:
        url = part.image_url.url
        if not url.startswith("data:"):
            raise BadParameter(
                "remote image URLs are never fetched; send the image inline as a data: URL "
                "(data:image/png;base64,...)",
                "messages",
            )
        header, comma, encoded = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadParameter("an image data: URL must be base64 (data:image/png;base64,...)",
                               "messages")  # fmt: skip
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        raise BadParameter("the inline file is not valid base64", "messages") from None


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; image parts are refused (this is for language models)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if not isinstance(part, TextPart):
                raise BadParameter(
                    "this model takes text only; send image and audio parts to an image or "
                    "audio model",
                    "messages",
                )
            texts.append(part.text)
        return "".join(texts)

    def files(self) -> list[bytes]:
        """The inline images and audio clips of this message, in order."""
        if not isinstance(self.content, list):
            return []
        return [inline_file(p) for p in self.content if not isinstance(p, TextPart)]


class _Sampling(_Strict):
    model: str
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=SEED[0], le=SEED[1])
    user: str | None = None
    # an extension (vLLM's name): generate at least this many tokens, ignoring end-of-sequence
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS)
    # accepted only at the values that leave the output unchanged
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(not s for s in stops):
            raise ValueError("a stop sequence must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def _unsupported(self) -> None:
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise BadParameter(f"{name} is not supported; leave it out or set it to 0", name)
        if self.logit_bias:
            raise BadParameter("logit_bias is not supported; leave it out", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise BadParameter("stream_options is only allowed with stream: true",
                               "stream_options")  # fmt: skip


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=1)
    response_format: dict[str, Any] | None = None

    def check(self) -> None:
        self._unsupported()
        if self.response_format not in (None, {"type": "text"}):
            raise BadParameter('only response_format {"type": "text"} is supported',
                               "response_format")  # fmt: skip
        if self.top_logprobs and not self.logprobs:
            raise BadParameter("top_logprobs needs logprobs: true", "top_logprobs")

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS)
    logprobs: int | None = Field(None, ge=0, le=1)  # top alternatives: 1 at most
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=1)
    suffix: None = None

    def check(self) -> None:
        self._unsupported()
        if isinstance(self.prompt, list) and not self.prompt:
            raise BadParameter("prompt must not be an empty list", "prompt")

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class EmbeddingRequest(_Strict):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=MAX_TOKENS)
    user: str | None = None

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        if not texts:
            raise BadParameter("input must not be an empty list", "input")
        return texts


def parse(kind: type[_Strict], body: bytes) -> Any:
    """Validate a request body; any problem is a 400 that says which parameter and why."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the body must be a JSON object")
    try:
        request = kind.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {where}"
        else:
            message = f"{where}: {first['msg']}"
        raise BadParameter(message, str(first["loc"][0]) if first["loc"] else None) from None
    check = getattr(request, "check", None)
    if check is not None:
        check()
    return request


# ---- responses --------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def now() -> int:
    return int(time.time())


def sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


DONE = b"data: [DONE]\n\n"


# a token's log-probability as replicas send it: (text, logprob, top text, top logprob)
TokenLogprob = tuple[str, float, str, float]


def chat_logprobs(tokens: list[TokenLogprob], top: bool) -> dict[str, Any]:
    """Chat ``logprobs``: one entry per token, with the most likely token as its top-1."""
    content = []
    for text, logprob, best, best_logprob in tokens:
        alternatives = [{"token": best, "logprob": best_logprob, "bytes": list(best.encode())}]
        content.append({"token": text, "logprob": logprob, "bytes": list(text.encode()),
                        "top_logprobs": alternatives if top else []})  # fmt: skip
    return {"content": content, "refusal": None}


def completion_logprobs(tokens: list[TokenLogprob], offset: int, top: bool) -> dict[str, Any]:
    """Legacy completions ``logprobs``: parallel lists and character offsets."""
    offsets, at = [], offset
    for text, *_ in tokens:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": [t[0] for t in tokens],
        "token_logprobs": [t[1] for t in tokens],
        "top_logprobs": [{t[2]: t[3]} for t in tokens] if top else None,
        "text_offset": offsets,
    }


def embeddings_body(model: str, vectors: np.ndarray, encoding: str, prompt_tokens: int) -> bytes:
    data = []
    for i, row in enumerate(vectors.astype(np.float32)):
        value: Any = (
            base64.b64encode(row.tobytes()).decode() if encoding == "base64" else row.tolist()
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    return orjson.dumps({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": prompt_tokens,
                                   "total_tokens": prompt_tokens}})  # fmt: skip


def models_body(names: list[tuple[str, int]]) -> bytes:
    return orjson.dumps({"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "modelplane"}
        for name, created in names
    ]})  # fmt: skip
