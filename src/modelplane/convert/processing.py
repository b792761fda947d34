"""Declared pre- and post-processing written into a version's ONNX file (metadata
``modelplane.processing``, like a text model's tokenizer), so the version stays one
content-addressed file and its replica needs nothing else. Runs in the conversion worker: the
spec is checked against the model's input and output, and a synthetic file (a gray image, a
tone) goes through the processing and the model before the version is stored."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from modelplane.convert import onnx as onnx_source
from modelplane.domain.processing import LABEL_OUTPUT, SCORE_OUTPUT, Processing
from modelplane.runtime.media import PROCESSING_METADATA, MediaRuntime, served_signature
from modelplane.runtime.onnx import OnnxRuntime


def sample_file(processing: Processing) -> bytes:
    """A file the processing must accept: a gray PNG, or a one-second 440 Hz WAV."""
    out = io.BytesIO()
    if processing.image is not None:
        from PIL import Image

        height, width = processing.image.resize
        Image.new(processing.image.mode, (width, height), 128).save(out, format="PNG")
    else:
        import soundfile

        assert processing.audio is not None
        rate = processing.audio.rate
        tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
        soundfile.write(out, tone, rate, format="WAV")
    return out.getvalue()


def annotate(model: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Write the processing into ``model`` (in place) and check it end to end; the report."""
    import onnx

    processing = Processing.from_dict(spec)
    served = served_signature(processing, onnx_source.inspect(model))  # 422 saying why not
    graph = onnx.load(str(model))
    kept = [p for p in graph.metadata_props if p.key != PROCESSING_METADATA]  # one declaration
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    entry = graph.metadata_props.add()
    entry.key, entry.value = PROCESSING_METADATA, json.dumps(processing.to_dict())
    onnx.save(graph, str(model))

    runtime = MediaRuntime(OnnxRuntime(model.read_bytes()))
    runtime.load()
    files = np.empty(2, dtype=np.object_)
    files[0] = files[1] = sample_file(processing)
    result = asyncio.run(
        runtime.predict({processing.input_name: files}, [LABEL_OUTPUT, SCORE_OUTPUT])
    )
    return {
        "passed": True,
        "outputs": [],
        "processing": processing.to_dict() | {"labels": len(processing.labels)},
        "inputs": "a synthetic " + ("image" if processing.image is not None else "tone"),
        "batch": 2,
        "signature": served.to_dict(),
        "sample_top_label": str(result[LABEL_OUTPUT][0][0]),
    }
