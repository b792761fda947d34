"""Images and audio in, labels out, as a user runs it: a small CNN trained here on scikit-learn's
digits and a tone classifier trained on synthetic clips, both exported to ONNX and pushed with
their preprocessing and labels; called with PNG bytes over V2 (tritonclient, binary), with a
data: URL in an OpenAI chat message, and with WAV and FLAC clips."""

from __future__ import annotations

import base64
import io
import json
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import tritonclient.http as triton

from modelplane.domain.processing import AudioSpec
from modelplane.runtime.media import log_mel
from modelplane.testing import DIGIT_NAMES, digits_classifier, wait_for

from .conftest import OpenAIClients, Server

DIGITS = list(DIGIT_NAMES)
TONES = {"low": 300.0, "mid": 700.0, "high": 1500.0}
AUDIO = AudioSpec(rate=8000, seconds=0.5, features="logmel", mels=20, fft=256, hop=128)


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "L").save(out, format="PNG")
    return out.getvalue()


def clip(hz: float, rate: int, fmt: str, seed: int) -> bytes:
    import soundfile

    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * 0.5)) / rate
    wave = 0.5 * np.sin(2 * np.pi * hz * t) + 0.05 * rng.standard_normal(t.size)
    out = io.BytesIO()
    soundfile.write(out, wave.astype(np.float32), rate, format=fmt)
    return out.getvalue()


def export(model: Any, example: Any, path: Path, name: str) -> None:
    """To ONNX with torch's TorchScript-based exporter (its deprecation warnings silenced)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=[name],
                          output_names=["logits"], dynamo=False,
                          dynamic_axes={name: {0: "n"}, "logits": {0: "n"}})  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, np.ndarray]:
    """The CNN on 8x8 digits of modelplane.testing (exported to ONNX), the model in process
    (ONNX Runtime on the same file), and held-out digits as PNG gray levels."""
    import onnxruntime as ort
    from sklearn.datasets import load_digits

    folder = digits_classifier(tmp_path_factory.mktemp("digits"))
    session = ort.InferenceSession(str(folder / "model.onnx"))

    def model(x: np.ndarray) -> np.ndarray:
        scores: np.ndarray = session.run(None, {"pixels": x.astype(np.float32)})[0]
        best: np.ndarray = scores.argmax(axis=1)
        return best

    images, _ = load_digits(return_X_y=True)
    pixels = np.round(images.reshape(-1, 8, 8) * 255 / 16)
    return folder / "model.onnx", model, pixels[1500:1520]


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier of three tones, on log-mel features of noisy synthetic clips."""
    import torch

    feats, labels = [], []
    for label, hz in enumerate(TONES.values()):
        for seed in range(20):
            samples = np.sin(2 * np.pi * hz * np.arange(AUDIO.samples) / AUDIO.rate)
            noisy = samples + 0.05 * np.random.default_rng(seed).standard_normal(AUDIO.samples)
            feats.append(log_mel(noisy.astype(np.float32), AUDIO))
            labels.append(label)
    x = torch.tensor(np.stack(feats))
    y = torch.tensor(labels)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    folder = tmp_path_factory.mktemp("tones")
    path = folder / "tones.onnx"
    export(model.eval(), x[:2], path, "features")
    (folder / "labels.txt").write_text("\n".join(TONES) + "\n")
    return path


def ready(server: Server, name: str) -> bool:
    return server.deployment(name)["state"] == "ready"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits: Any, tones: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("media") / "home")
    try:
        server.start()
        path = digits[0]
        server.push(path, "digits", "--preprocess", "image:resize=8,mode=L,normalize=unit",
                    "--labels", str(path.parent / "labels.txt"), "--top-k", "3")  # fmt: skip
        server.push(tones, "tones", "--preprocess",
                    "audio:rate=8000,seconds=0.5,features=logmel,mels=20,fft=256,hop=128",
                    "--labels", str(tones.parent / "labels.txt"))  # fmt: skip
        for name in ("digits", "tones"):
            assert server.cli("deploy", name).returncode == 0
            wait_for(partial(ready, server, name), timeout=120)
        yield server
    finally:
        server.stop()


def test_png_digits_over_v2_match_the_model_in_process(server: Server, digits: Any) -> None:
    _, model, pixels = digits
    shown = json.loads(server.cli("models", "show", "digits:1", "--json").stdout)
    assert shown["signature"]["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert shown["signature"]["task"] == "image-classification"
    files = np.array([png(p) for p in pixels], dtype=object)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton.InferInput("image", [len(files)], "BYTES")
    tensor.set_data_from_numpy(files)  # the binary extension: the PNG bytes as they are
    result = client.infer("digits", [tensor], headers=server.auth)
    labels, scores = result.as_numpy("label"), result.as_numpy("score")
    assert labels.shape == (20, 3)
    expected = model(pixels[:, None] / 255)
    assert [x.decode() for x in labels[:, 0]] == [DIGITS[i] for i in expected]
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first
    assert (scores > 0).all()
    assert (scores.sum(axis=1) <= 1 + 1e-6).all()  # the best 3 of a softmax over 10 classes


def test_png_digits_over_openai_chat_and_remote_urls_refused(
    server: Server, digits: Any, openai_clients: OpenAIClients
) -> None:
    _, model, pixels = digits
    client = openai_clients(server.url, server.key)
    url = "data:image/png;base64," + base64.b64encode(png(pixels[0])).decode()
    reply = client.chat.completions.create(model="digits", messages=[{"role": "user", "content": [
        {"type": "text", "text": "which digit?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]}])  # fmt: skip
    top = (reply.choices[0].message.content or "").splitlines()[0].split(":")[0]
    assert top == DIGITS[int(model(pixels[:1, None] / 255)[0])]
    with pytest.raises(openai.BadRequestError, match="never fetched"):
        client.chat.completions.create(model="digits", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/seven.png"}},
        ]}])  # fmt: skip


def test_broken_files_get_a_clear_400(server: Server) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    with pytest.raises(triton.InferenceServerException, match="not a PNG, JPEG or WebP"):
        client.infer("digits", [tensor], headers=server.auth)


@pytest.mark.parametrize(("fmt", "rate"), [("WAV", 16000), ("FLAC", 8000)])
def test_an_audio_clip_is_classified(server: Server, fmt: str, rate: int) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    names = list(TONES)
    files = np.array([clip(hz, rate, fmt, seed=99) for hz in TONES.values()], dtype=object)
    tensor = triton.InferInput("audio", [len(files)], "BYTES")
    tensor.set_data_from_numpy(files)  # 16 kHz WAVs are resampled to the model's 8 kHz
    labels = client.infer("tones", [tensor], headers=server.auth).as_numpy("label")
    assert [x.decode() for x in labels[:, 0]] == names


def test_an_audio_clip_in_an_openai_chat_message(
    server: Server, openai_clients: OpenAIClients
) -> None:
    client = openai_clients(server.url, server.key)
    wav = base64.b64encode(clip(TONES["high"], 16000, "WAV", seed=5)).decode()
    reply = client.chat.completions.create(model="tones", messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
    ]}])  # fmt: skip
    assert (reply.choices[0].message.content or "").startswith("high:")
