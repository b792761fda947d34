"""A language model through the OpenAI API, as a user runs it: a tiny Llama made in the test
(tokenizer trained here, nothing downloaded) pushed with the CLI, converted by onnxruntime-genai's
model builder, deployed, and called with the official ``openai`` client and an invoker key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelplane.testing import tiny_llama, wait_for

from .conftest import OpenAIClients, Server

PROMPTS = ["The quick brown", "Hello! How can I", "A language model", "Tokens flow from"]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def llm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llm") / "tiny-llm")


@pytest.fixture(scope="module")
def reference(llm_folder: Path) -> Any:
    """Greedy continuations by transformers' own generate, on the same weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llm_folder)
    model = AutoModelForCausalLM.from_pretrained(llm_folder)
    model.eval()  # type: ignore[no-untyped-call]

    def greedy(text: str, max_tokens: int = MAX_TOKENS) -> str:
        ids = torch.tensor([tokenizer.encode(text)])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_tokens, pad_token_id=2)  # fmt: skip
        tokens = [int(t) for t in out[0, ids.shape[1] :] if int(t) != 2]
        return str(tokenizer.decode(tokens))

    greedy.chat_prompt = lambda messages: tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        messages, tokenize=False, add_generation_prompt=True
    )
    return greedy


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory, llm_folder: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("llm-server") / "home")
    try:
        server.start()
        server.push(llm_folder, "tiny-llm")
        result = server.cli("deploy", "tiny-llm")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: server.deployment("tiny-llm")["state"] == "ready", timeout=120)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def invoker(llm_server: Server) -> str:
    created = llm_server.cli("keys", "create", "--name", "app", "--role", "invoker", "--json")
    assert created.returncode == 0, created.stderr
    secret: str = json.loads(created.stdout)["secret"]
    return secret


@pytest.fixture
def client(llm_server: Server, invoker: str, openai_clients: OpenAIClients) -> openai.OpenAI:
    return openai_clients(llm_server.url, invoker)


def test_the_push_reports_token_parity_with_transformers(llm_server: Server) -> None:
    shown = llm_server.cli("models", "show", "tiny-llm:1", "--json")
    assert shown.returncode == 0, shown.stderr
    version = json.loads(shown.stdout)
    assert version["signature"]["task"] == "text-generation"
    assert version["report"]["agreement"] == 1.0  # fp32: every parity token equal
    assert all(row["equal"] for row in version["report"]["prompts"])


def test_quantized_weights_report_their_agreement(llm_server: Server, llm_folder: Path) -> None:
    # --force: the tiny model's agreement at int4 is what it is; the report must say it
    llm_server.push(llm_folder, "tiny-int4", "--precision", "int4", "--force")
    shown = llm_server.cli("models", "show", "tiny-int4:1", "--json")
    quantized = json.loads(shown.stdout)
    full = json.loads(llm_server.cli("models", "show", "tiny-llm:1", "--json").stdout)
    report = quantized["report"]
    assert report["precision"] == "int4"
    assert 0.0 <= report["agreement"] <= 1.0
    assert report["passed"] == (report["agreement"] >= report["required_agreement"])
    assert quantized["size"] < full["size"]  # 4-bit weights


def test_models_list_and_greedy_completion_equal_transformers(
    client: openai.OpenAI, reference: Any
) -> None:
    assert "tiny-llm" in [m.id for m in client.models.list()]
    for prompt in PROMPTS:
        done = client.completions.create(model="tiny-llm", prompt=prompt, max_tokens=MAX_TOKENS,
                                         temperature=0)  # fmt: skip
        assert done.choices[0].text == reference(prompt), prompt
        assert done.usage is not None
        assert done.usage.completion_tokens <= MAX_TOKENS


def test_a_long_prompt_read_in_chunks_still_equals_transformers(
    client: openai.OpenAI, reference: Any
) -> None:
    # over 64 tokens: prefilled in two chunks, and the KV cache grows past its first size
    prompt = "The cat sat on the mat and looked at the moon. " * 8
    done = client.completions.create(model="tiny-llm", prompt=prompt, max_tokens=MAX_TOKENS,
                                     temperature=0)  # fmt: skip
    assert done.usage is not None
    assert done.usage.prompt_tokens > 64
    assert done.choices[0].text == reference(prompt)


def test_chat_completion_streamed_and_not_equal_transformers(
    client: openai.OpenAI, reference: Any
) -> None:
    messages: Any = [{"role": "user", "content": "hello"}]
    expected = reference(reference.chat_prompt(messages))
    whole = client.chat.completions.create(model="tiny-llm", messages=messages,
                                           max_tokens=MAX_TOKENS, temperature=0)  # fmt: skip
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(
        model="tiny-llm", messages=messages, max_tokens=MAX_TOKENS, temperature=0,
        stream=True, stream_options={"include_usage": True},
    ))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[-1].usage is not None
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_greedy_logprobs_match_transformers(client: openai.OpenAI, llm_folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llm_folder)
    model = AutoModelForCausalLM.from_pretrained(llm_folder)
    ids = torch.tensor([tokenizer.encode(PROMPTS[1])])
    with torch.no_grad():
        first = torch.log_softmax(model(ids).logits[0, -1].double(), -1).max().item()
    done = client.completions.create(model="tiny-llm", prompt=PROMPTS[1], max_tokens=4,
                                     temperature=0, logprobs=1)  # fmt: skip
    logprobs = done.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.token_logprobs is not None
    assert logprobs.token_logprobs[0] == pytest.approx(first, abs=1e-3)
    assert "".join(logprobs.tokens or []) == done.choices[0].text
    # greedy: each token is its own most likely alternative
    assert [next(iter(t.values())) for t in logprobs.top_logprobs or []] == pytest.approx(
        logprobs.token_logprobs
    )
    chat = client.chat.completions.create(model="tiny-llm", max_tokens=4, temperature=0,
                                          messages=[{"role": "user", "content": "hello"}],
                                          logprobs=True, top_logprobs=1)  # fmt: skip
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(t.top_logprobs[0].logprob == pytest.approx(t.logprob) for t in content)
    # streamed: each token's text_offset counts from the start of the whole completion
    offsets, text = [], ""
    for chunk in client.completions.create(model="tiny-llm", prompt=PROMPTS[1], max_tokens=6,
                                           temperature=0, logprobs=1, stream=True):  # fmt: skip
        part = chunk.choices[0]
        if part.logprobs is not None and part.logprobs.text_offset:
            offsets += part.logprobs.text_offset
            starts = [len(text) + len("".join((part.logprobs.tokens or [])[:i]))
                      for i in range(len(part.logprobs.tokens or []))]  # fmt: skip
            assert part.logprobs.text_offset == starts
        text += part.text
    assert len(offsets) == 6  # one per token
    assert offsets == sorted(offsets)
    assert offsets[-1] > 0  # later chunks do not start again at 0


def test_a_seeded_sample_is_the_same_twice(client: openai.OpenAI) -> None:
    def draw() -> str:
        done = client.completions.create(model="tiny-llm", prompt="The cat", max_tokens=12,
                                         temperature=1.0, seed=7)  # fmt: skip
        return done.choices[0].text

    assert draw() == draw()


def test_a_stop_sequence_cuts_the_text(client: openai.OpenAI, reference: Any) -> None:
    prompt = max(PROMPTS, key=lambda p: len(reference(p)))
    full = reference(prompt)
    middle = len(full) // 2
    stop = full[middle : middle + 2]
    assert len(stop) == 2, full
    done = client.completions.create(model="tiny-llm", prompt=prompt, max_tokens=MAX_TOKENS,
                                     temperature=0, stop=[stop])  # fmt: skip
    assert done.choices[0].text == full[: full.index(stop)]
    assert done.choices[0].finish_reason == "stop"


def test_wrong_key_unknown_parameter_and_long_prompt_get_openai_errors(
    llm_server: Server, client: openai.OpenAI, openai_clients: OpenAIClients
) -> None:
    bad = openai_clients(llm_server.url, "mp_wrong")
    with pytest.raises(openai.AuthenticationError) as denied:
        bad.models.list()
    assert denied.value.status_code == 401
    assert denied.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument"):
        client.completions.create(model="tiny-llm", prompt="a", extra_body={"top_k": 5})
    with pytest.raises(openai.BadRequestError, match="context is 256 tokens"):
        client.completions.create(model="tiny-llm", prompt="hello " * 300, max_tokens=4)
    with pytest.raises(openai.NotFoundError, match="not deployed"):
        client.completions.create(model="nope", prompt="a")


def _metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=server.auth, timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_32_concurrent_streams_share_decoding_steps(
    llm_server: Server, invoker: str, reference: Any
) -> None:
    async def one(client: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await client.completions.create(model="tiny-llm", prompt=prompt, stream=True,
                                                 max_tokens=MAX_TOKENS, temperature=0)  # fmt: skip
        return "".join([c.choices[0].text async for c in stream])

    async def all_of_them() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{llm_server.url}/v1", api_key=invoker,
                                      max_retries=0) as client:  # fmt: skip
            return await asyncio.gather(*(one(client, PROMPTS[i % 4]) for i in range(32)))

    texts = asyncio.run(all_of_them())
    assert texts == [reference(PROMPTS[i % 4]) for i in range(32)]
    # the engine advanced more than one stream in some steps
    batched = _metric(llm_server, "modelplane_generation_step_batch_size_sum")
    steps = _metric(llm_server, "modelplane_generation_step_batch_size_count")
    assert steps > 0
    assert batched / steps > 1


def test_a_client_that_goes_away_frees_its_slot(llm_server: Server, invoker: str) -> None:
    def running() -> float:
        return _metric(llm_server, "modelplane_generation_streams", state="running")

    body = {"model": "tiny-llm", "prompt": "The", "max_tokens": 200, "min_tokens": 200,
            "stream": True, "temperature": 1.0}  # fmt: skip
    headers = {"Authorization": f"Bearer {invoker}"}
    url = f"{llm_server.url}/v1/completions"
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", url, json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert running() == 1
    # the connection is closed here, mid-stream
    wait_for(lambda: running() == 0, timeout=2.0, interval=0.05)


def test_a_key_with_a_token_budget_is_refused_once_it_is_spent(
    llm_server: Server, openai_clients: OpenAIClients
) -> None:
    made = llm_server.cli("keys", "create", "--name", "metered", "--role", "invoker",
                          "--daily-tokens", "30", "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["secret"]
    client = openai_clients(llm_server.url, secret)
    spent = 0
    for _ in range(2):  # under the budget when each starts
        done = client.completions.create(model="tiny-llm", prompt="The quick brown", max_tokens=10,
                                         temperature=0, extra_body={"min_tokens": 10})  # fmt: skip
        assert done.usage is not None
        spent += done.usage.total_tokens
    assert spent >= 30  # the second one crossed the budget, and finished
    with pytest.raises(openai.RateLimitError, match="used its 30 tokens for today") as refused:
        client.completions.create(model="tiny-llm", prompt="a", max_tokens=2)
    assert refused.value.code == "rate_limit_exceeded"
    listed = llm_server.cli("keys", "list")
    assert "30 tokens/day" in listed.stdout


def test_the_dashboard_shows_a_language_model_s_engine(llm_server: Server, invoker: str) -> None:
    import threading

    from .test_dashboard import offline_page

    stop = threading.Event()

    def load() -> None:
        with openai.OpenAI(base_url=f"{llm_server.url}/v1", api_key=invoker,
                           max_retries=0) as client:  # fmt: skip
            while not stop.is_set():
                client.completions.create(model="tiny-llm", prompt="The", max_tokens=30,
                                          extra_body={"min_tokens": 30})  # fmt: skip

    loaders = [threading.Thread(target=load) for _ in range(3)]
    with offline_page(llm_server.url) as (page, elsewhere):
        page.goto(llm_server.url + "/login")
        page.fill("#key", llm_server.key)
        page.click("button[type=submit]")
        page.wait_for_selector("#deployments >> text=tiny-llm")
        for loader in loaders:
            loader.start()
        try:
            page.goto(llm_server.url + "/#/deployments/tiny-llm")
            # the engine's charts appear once its series are seen, and move with the traffic
            page.wait_for_function(
                """() => { const c = document.querySelector('[data-chart="Tokens/s"]');
                           return c && /out [0-9.]+\\/s/.test(c.textContent)
                                  && parseFloat(c.textContent.split('out ')[1]) > 0; }""",
                timeout=30_000,
            )
            text = page.inner_text(".charts")
            for title in ("Time to first token", "Streams", "KV cache"):
                assert title in text
        finally:
            stop.set()
            for loader in loaders:
                loader.join()
    assert elsewhere == []


def test_odd_sampling_values_fail_nobody(client: openai.OpenAI, reference: Any) -> None:
    """A negative seed and a temperature so small that dividing by it overflows are valid
    OpenAI values: they are served (once they killed the engine or failed every stream)."""

    def draw() -> str:
        done = client.completions.create(model="tiny-llm", prompt="The cat", max_tokens=8,
                                         seed=-1, extra_body={"min_tokens": 8})  # fmt: skip
        return done.choices[0].text

    first = draw()
    assert first
    assert draw() == first  # a negative seed draws like any other: the same twice
    tiny = client.completions.create(model="tiny-llm", prompt=PROMPTS[0], max_tokens=MAX_TOKENS,
                                     temperature=1e-300)  # fmt: skip
    assert tiny.choices[0].text == reference(PROMPTS[0])  # as good as greedy
    with pytest.raises(openai.BadRequestError, match="seed"):
        client.completions.create(model="tiny-llm", prompt="a", seed=10**30)


def test_a_long_prompt_read_beside_a_running_stream_equals_transformers(
    client: openai.OpenAI, reference: Any
) -> None:
    """A stream decoding in one slot while a long prompt is read in chunks in another: both
    come out right (the step-level rule is tested in tests/unit/runtime/test_engine_steps.py)."""
    prompt = "The cat sat on the mat and looked at the moon. " * 8
    running = client.completions.create(model="tiny-llm", prompt="The", max_tokens=200,
                                        stream=True, extra_body={"min_tokens": 200})  # fmt: skip
    chunks = iter(running)
    next(chunks)  # it is decoding
    done = client.completions.create(model="tiny-llm", prompt=prompt, max_tokens=MAX_TOKENS,
                                     temperature=0)  # fmt: skip
    assert done.choices[0].text == reference(prompt)
    assert sum(1 for _ in chunks) > 0  # and the running stream went on to its end


def test_a_completion_is_capped_to_what_is_left_of_the_token_budget(
    llm_server: Server, openai_clients: OpenAIClients
) -> None:
    made = llm_server.cli("keys", "create", "--name", "capped", "--role", "invoker",
                          "--daily-tokens", "15", "--json")  # fmt: skip
    client = openai_clients(llm_server.url, json.loads(made.stdout)["secret"])
    done = client.completions.create(model="tiny-llm", prompt="The quick brown", max_tokens=100,
                                     extra_body={"min_tokens": 100})  # fmt: skip
    assert done.usage is not None
    assert done.usage.completion_tokens == 15  # all that was left, set aside while it ran
    assert done.choices[0].finish_reason == "length"
