"""OpenAI requests are validated strictly: what would change the output and is not supported
is a 400 naming the parameter, never silently ignored."""

from __future__ import annotations

import orjson
import pytest

from modelplane.errors import InvalidInput
from modelplane.protocol import openai as oa


def chat(**extra: object) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})


def test_a_plain_chat_request_parses_with_openai_defaults() -> None:
    request = oa.parse(oa.ChatCompletionRequest, chat())
    assert (request.n, request.stream, request.temperature, request.limit()) == (
        1,
        False,
        None,
        None,
    )
    assert request.messages[0].text() == "hi"


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    request = oa.parse(oa.ChatCompletionRequest, chat(max_tokens=5, max_completion_tokens=7))
    assert request.limit() == 7


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"tools": []}, "tools", "Unrecognized request argument supplied: tools"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
        ({"logit_bias": {"1": 2}}, "logit_bias", "not supported"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"stop": [""]}, "stop", "must not be empty"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream: true"),
        ({"response_format": {"type": "json_object"}}, "response_format", "text"),
    ],
)
def test_what_would_change_the_output_is_refused_by_name(
    extra: dict[str, object], param: str, words: str
) -> None:
    with pytest.raises(oa.BadParameter, match=words) as caught:
        oa.parse(oa.ChatCompletionRequest, chat(**extra))
    assert caught.value.param == param
    assert caught.value.status == 400


def test_zero_penalties_and_a_user_change_nothing_and_are_accepted() -> None:
    request = oa.parse(oa.ChatCompletionRequest,
                       chat(frequency_penalty=0, presence_penalty=0.0, user="u-1"))  # fmt: skip
    assert request.user == "u-1"


def test_image_parts_are_refused_for_a_language_model() -> None:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]}]})  # fmt: skip
    request = oa.parse(oa.ChatCompletionRequest, body)
    with pytest.raises(oa.BadParameter, match="text only"):
        request.messages[0].text()


def test_a_body_that_is_not_json_is_a_400() -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        oa.parse(oa.CompletionRequest, b"{nope")


def test_completions_default_to_sixteen_tokens_like_openai() -> None:
    request = oa.parse(oa.CompletionRequest, orjson.dumps({"model": "m", "prompt": "a"}))
    assert request.max_tokens == 16
    assert request.prompts() == ["a"]


def test_openai_error_object_shape() -> None:
    doc = orjson.loads(oa.error_body(401, "invalid or revoked API key"))
    assert doc == {"error": {"message": "invalid or revoked API key",
                             "type": "invalid_request_error", "param": None,
                             "code": "invalid_api_key"}}  # fmt: skip
