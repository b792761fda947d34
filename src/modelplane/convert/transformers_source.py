"""Hugging Face text encoders (a model directory with tokenizer.json): the model is exported with
its pooling (mean or CLS, normalized when the sentence-transformers config says so) or its
classification head, and the tokenizer travels inside the ONNX file's metadata, so the deployed
model takes strings (BYTES) and tokenizes in the replica with the ``tokenizers`` library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from modelplane.convert.archive import extract, find_root
from modelplane.convert.base import Arrays, Converted, ConvertOptions
from modelplane.domain.signature import MAX_LENGTH_METADATA, TOKENIZER_METADATA
from modelplane.errors import UnsupportedModel

SAMPLE_TEXTS = [
    "A short one.",
    "modelplane serves models converted to ONNX, and proves they answer like the original.",
    "Sentences of different lengths make the tokenizer pad, which the pooling must ignore.",
    "ok",
]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _pooling(root: Path) -> tuple[str, bool]:
    modules = _read_json(root / "modules.json") or []
    normalize = any("Normalize" in str(m.get("type", "")) for m in modules)
    mode = "mean"
    for module in modules:
        if "Pooling" in str(module.get("type", "")):
            config = _read_json(root / module.get("path", "") / "config.json") or {}
            if config.get("pooling_mode_cls_token"):
                mode = "cls"
    return mode, normalize


def convert(source: Path, workdir: Path, options: ConvertOptions) -> Converted:
    import onnx
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    root = find_root(extract(source, workdir / "upload", options.unpack), "config.json")
    if not (root / "tokenizer.json").exists():
        raise UnsupportedModel("the model directory has no tokenizer.json (a fast tokenizer)")
    # a local folder (local_files_only): nothing is downloaded from the Hub
    config = AutoConfig.from_pretrained(root, local_files_only=True)  # nosec B615
    classifier = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    loader = AutoModelForSequenceClassification if classifier else AutoModel
    model = loader.from_pretrained(root, local_files_only=True).eval()
    st_config = _read_json(root / "sentence_bert_config.json") or {}
    limit: Any = st_config.get("max_seq_length") or getattr(config, "max_position_embeddings", 512)
    max_length = int(limit)
    mode, normalize = _pooling(root)

    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    pad = tokenizer.id_to_token(pad_id) or "[PAD]"
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad)  # to the longest in a batch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids)  # fmt: skip
            if classifier:
                return out.logits
            hidden = out.last_hidden_state
            if mode == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return pooled

    encoder = Encoder().eval()
    batch = tokenizer.encode_batch(SAMPLE_TEXTS)
    feeds = {
        "input_ids": np.array([e.ids for e in batch], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in batch], dtype=np.int64),
    }
    names = list(feeds)
    output = "logits" if classifier else "embedding"
    path = workdir / "model.onnx"
    example = tuple(torch.from_numpy(feeds[n]) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"}
    try:
        torch.onnx.export(encoder, example, str(path), input_names=names, output_names=[output],
                          dynamic_axes=axes, dynamo=False, opset_version=17)  # fmt: skip
    except Exception as exc:
        raise UnsupportedModel(f"exporting the transformer failed: {str(exc)[:400]}") from None
    graph = onnx.load(str(path))
    for key, value in ((TOKENIZER_METADATA, tokenizer.to_str()),
                       (MAX_LENGTH_METADATA, str(max_length))):  # fmt: skip
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))

    def original(inputs: Arrays) -> Arrays:
        with torch.no_grad():
            result = encoder(*(torch.from_numpy(inputs[n]) for n in names))
        return {output: result.numpy()}

    return Converted(path, original, example_inputs=feeds, parity_inputs=feeds)
