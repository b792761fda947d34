"""Hugging Face causal language models (a ``save_pretrained`` folder: config, safetensors,
tokenizer, chat template) to an onnxruntime-genai bundle, with onnxruntime-genai's own model
builder (Llama, Qwen, Mistral, Phi, Gemma families and more). Runs inside the conversion worker.

The parity check generates greedily from the same prompts with transformers (the original
weights) and with the converted model: at fp32 the tokens must be equal; at int8 and int4 the
report gives the agreement rate (quantization changes some choices by design).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess  # nosec B404
import sys
import time
from pathlib import Path
from typing import Any

from modelplane.bundles import GENAI_CONFIG, pack
from modelplane.convert.archive import extract, find_root
from modelplane.convert.base import ConvertOptions
from modelplane.domain.signature import TEXT_GENERATION
from modelplane.errors import InvalidInput, UnsupportedModel, redact_paths
from modelplane.runtime.generation import greedy

PRECISIONS = ("fp32", "int8", "int4")
PARITY_PROMPTS = (
    "The quick brown fox",
    "A language model",
    "Hello! How can I",
    "modelplane serves",
)
PARITY_TOKENS = 12
# the share of parity tokens a quantized model must agree on with the original
MIN_AGREEMENT = {"fp32": 1.0, "int8": 0.5, "int4": 0.5}
BUNDLE = "model.bundle"


def causal_root(source: Path, workdir: Path, options: ConvertOptions) -> Path | None:
    """The unpacked model folder if the upload is a causal language model, else None."""
    root = find_root(extract(source, workdir / "upload", options.unpack), "config.json")
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        return None
    architectures = config.get("architectures") or []
    return root if any(str(a).endswith("ForCausalLM") for a in architectures) else None


def _build(root: Path, out: Path, cache: Path, precision: str) -> None:
    """Run onnxruntime-genai's model builder (its command line, the supported entry point)."""
    if any(importlib.util.find_spec(m) is None for m in ("onnxruntime_genai", "onnx_ir")):
        raise UnsupportedModel(
            "converting language models needs onnxruntime-genai on the server; install it with "
            "pip install 'modelplane[llm]'"
        )
    config = json.loads((root / "config.json").read_text())
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(root),
               "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(cache)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # nosec B603
    if done.returncode != 0 or not (out / GENAI_CONFIG).exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        print(done.stderr[-4000:], file=sys.stderr)  # the server log keeps the detail
        raise UnsupportedModel(
            f"the model builder could not convert this {config.get('model_type')!r} model: "
            f"{redact_paths(tail[0])[:300]}; Llama, Qwen, Mistral, Phi and Gemma families are "
            "supported"
        )


def _greedy_reference(root: Path, prompts: list[list[int]]) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root, local_files_only=True,  # nosec B615
                                                 dtype=torch.float32)  # fmt: skip
    model.eval()  # type: ignore[no-untyped-call]
    eos_id = model.generation_config.eos_token_id
    eos = set(eos_id if isinstance(eos_id, list) else [eos_id])
    model.generation_config.pad_token_id = next(iter(eos))
    outputs = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                               max_new_tokens=PARITY_TOKENS)  # fmt: skip
            produced = [int(t) for t in y[0, len(ids) :]]
            ends = [i for i, t in enumerate(produced) if t in eos]
            outputs.append(produced[: ends[0] + 1] if ends else produced)
    return outputs


def convert(root: Path, workdir: Path, precision: str) -> dict[str, Any]:
    """Build the bundle into ``workdir/model.bundle`` and return the parity report."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    from transformers import AutoTokenizer

    out, cache = workdir / "genai", workdir / "cache"
    started = time.perf_counter()
    _build(root, out, cache, precision)
    convert_s = time.perf_counter() - started
    tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)  # nosec B615
    prompts = [tokenizer.encode(p, add_special_tokens=True) for p in PARITY_PROMPTS]
    expected = _greedy_reference(root, prompts)
    actual = greedy(out, prompts, PARITY_TOKENS)  # through the decoder replicas serve with
    total = sum(max(len(e), len(g)) for e, g in zip(expected, actual, strict=True))
    agreeing = sum(a == b for e, g in zip(expected, actual, strict=True)
                   for a, b in zip(e, g, strict=False))  # fmt: skip
    agreement = agreeing / total if total else 1.0
    passed = agreement >= MIN_AGREEMENT[precision]
    memory = _memory(out)
    pack(out, workdir / BUNDLE)
    rows = [
        {"prompt": text, "expected": e, "actual": a, "equal": e == a}
        for text, e, a in zip(PARITY_PROMPTS, expected, actual, strict=True)
    ]
    return {
        "passed": passed,
        "task": TEXT_GENERATION,
        "artifact": BUNDLE,
        "precision": precision,
        "method": f"greedy, {PARITY_TOKENS} tokens per prompt, against transformers' generate",
        "agreement": round(agreement, 4),
        "required_agreement": MIN_AGREEMENT[precision],
        "prompts": rows,
        "outputs": [{"name": "tokens", "passed": passed, "agreement": round(agreement, 4)}],
        "inputs": "the parity prompts above",
        "batch": len(prompts),
        "convert_seconds": round(convert_s, 3),
        "memory": memory,  # what a replica needs (domain.resources.generation_memory_mb)
    }


def _memory(folder: Path) -> dict[str, int]:
    """The weights' size and a KV cache token's size (fp32 keys and values of every layer)."""
    decoder = json.loads((folder / GENAI_CONFIG).read_text())["model"]
    layers = decoder["decoder"]
    per_token = (2 * int(layers["num_hidden_layers"]) * int(layers["num_key_value_heads"])
                 * int(layers["head_size"]) * 4)  # fmt: skip
    weights = sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model.onnx"))
    return {"weights_bytes": weights, "kv_bytes_per_token": per_token,
            "context_length": int(decoder["context_length"])}  # fmt: skip
