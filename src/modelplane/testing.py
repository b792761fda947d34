"""Helpers for users' own tests (and ours): small models built in code, free ports, polling."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import psutil
from onnx import TensorProto, helper

from modelplane.convert.onnx import ONNX_TO_V2
from modelplane.demo import iris_onnx, train_iris

__all__ = [
    "IRIS_REQUEST",
    "RayCluster",
    "digits_classifier",
    "free_port",
    "identity_onnx",
    "iris_onnx",
    "mlp_onnx",
    "multi_identity_onnx",
    "ray_cluster",
    "tiny_llama",
    "train_iris",
    "trained_mlp",
    "wait_for",
]

V2_TO_ONNX = {v2: elem for elem, v2 in ONNX_TO_V2.items()}

# A V2 request for the iris demo: one setosa flower (the model answers label 0).
IRIS_REQUEST = {"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
                            "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1) -> None:
    """Poll ``check`` until it returns True; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout:g}s")


def identity_onnx(datatype: str, shape: Sequence[int | None] = (None, 2)) -> bytes:
    """A one-node ONNX model whose output ``y`` equals its input ``x`` (any V2 datatype)."""
    return multi_identity_onnx({"x": datatype}, shape, {"x": "y"})


def multi_identity_onnx(
    inputs: dict[str, str],
    shape: Sequence[int | None] = (None, 2),
    names: dict[str, str] | None = None,
) -> bytes:
    """An ONNX model passing each input (name -> V2 datatype) to an output of the same type,
    named ``names[input]`` or ``<input>_out``."""
    names = names or {}
    nodes, graph_inputs, graph_outputs = [], [], []
    for name, datatype in inputs.items():
        out = names.get(name, f"{name}_out")
        elem = V2_TO_ONNX[datatype]
        graph_inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        graph_outputs.append(helper.make_tensor_value_info(out, elem, list(shape)))
        nodes.append(helper.make_node("Identity", [name], [out]))
    graph = helper.make_graph(nodes, "identity", graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def mlp_onnx(
    sizes: Sequence[int] = (256, 1024, 1024, 1024, 10),
    seed: int = 0,
    layers: Sequence[tuple[Any, Any]] | None = None,
) -> bytes:
    """A fully connected FP32 network (MatMul, Add, Relu): input ``x`` [N, sizes[0]], output
    ``y`` [N, sizes[-1]], with random weights, or ``layers`` ((weights [in, out], bias) each)."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    current = "x"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        if layers is not None:
            w, b = (np.asarray(a, dtype=np.float32) for a in layers[i])
        else:
            w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
            b = np.zeros(fan_out, dtype=np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, sizes[-1]])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def trained_mlp(
    sizes: Sequence[int] = (256, 1024, 1024, 1024, 10),
    rows: int = 4096,
    epochs: int = 4,
    held_out: int = 2000,
) -> tuple[bytes, Any]:
    """The network of :func:`mlp_onnx` trained to classify points of ``sizes[-1]`` clusters in
    ``sizes[0]`` dimensions (scikit-learn's ``make_classification``; torch, a few seconds):
    the ONNX bytes and ``held_out`` rows of inputs it was not trained on, samples to push
    with it."""
    import numpy as np
    import torch
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=rows + held_out, n_features=sizes[0], n_informative=min(32, sizes[0]),
        n_redundant=0, n_classes=sizes[-1], n_clusters_per_class=1, class_sep=3.0,
        random_state=0,
    )  # fmt: skip
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    torch.manual_seed(0)
    linears = [torch.nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
    stack: list[torch.nn.Module] = []
    for linear in linears:
        stack += [linear, torch.nn.ReLU()]
    model = torch.nn.Sequential(*stack[:-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, labels = torch.tensor(x[:rows]), torch.tensor(y[:rows])
    for _ in range(epochs):
        for start in range(0, rows, 128):
            optimizer.zero_grad()
            logits = model(inputs[start : start + 128])
            loss = torch.nn.functional.cross_entropy(logits, labels[start : start + 128])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    layers = [(lin.weight.detach().numpy().T, lin.bias.detach().numpy()) for lin in linears]
    return mlp_onnx(sizes, layers=layers), x[rows:]


def scores_onnx(scale: float = 1.0, slow_layers: int = 0, flip_above: float | None = None) -> bytes:
    """A linear scorer, input ``x`` [N, 4] FP32, output ``scores`` [N, 3] FP32 (its label is
    the arg-max), with fixed weights times ``scale``: versions of one model for traffic tests.
    ``slow_layers``: that many 1024-wide layers computed beside it (a deliberately slower
    version, same answers); ``flip_above``: rows whose first input exceeds it get negated
    scores (their label changes: a version that disagrees on those rows)."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(7)
    w = (rng.standard_normal((4, 3)) * scale).astype(np.float32)
    weights = [numpy_helper.from_array(w, "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s0"])]
    out = "s0"
    if slow_layers:
        wide = (rng.standard_normal((4, 1024)) / 2).astype(np.float32)
        square = (rng.standard_normal((1024, 1024)) / np.sqrt(1024)).astype(np.float32)
        tiny = np.array([1e-30], dtype=np.float32)
        weights += [numpy_helper.from_array(a, n) for a, n in
                    ((wide, "wide"), (square, "square"), (tiny, "tiny"))]  # fmt: skip
        nodes.append(helper.make_node("MatMul", ["x", "wide"], ["h0"]))
        for i in range(slow_layers):
            nodes.append(helper.make_node("MatMul", [f"h{i}", "square"], [f"m{i}"]))
            nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
        nodes += [
            helper.make_node("ReduceMean", [f"h{slow_layers}"], ["r"], keepdims=1),
            helper.make_node("Mul", ["r", "tiny"], ["rt"]),
            helper.make_node("Add", [out, "rt"], ["s1"]),
        ]
        out = "s1"
    if flip_above is not None:
        limits = [np.array([v], dtype=np.int64) for v in (0, 1, 1)]
        weights += [
            numpy_helper.from_array(a, n) for a, n in zip(limits, ("c0", "c1", "ax"), strict=True)
        ]
        weights.append(numpy_helper.from_array(np.array([flip_above], np.float32), "limit"))
        nodes += [
            helper.make_node("Slice", ["x", "c0", "c1", "ax"], ["first"]),
            helper.make_node("Greater", ["first", "limit"], ["flip"]),
            helper.make_node("Neg", [out], ["negated"]),
            helper.make_node("Where", ["flip", "negated", out], ["s2"]),
        ]
        out = "s2"
    nodes.append(helper.make_node("Identity", [out], ["scores"]))
    graph = helper.make_graph(
        nodes, "scores",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 3])],
        initializer=weights,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


# ---- a real Ray cluster on this machine ------------------------------------------------------
# Nodes on loopback addresses (127.0.0.2, 127.0.0.3, ...: Ray rewrites 127.0.0.1), found and
# stopped by process id so that nothing else running Ray on the machine is touched.

RAY = Path(sys.executable).parent / "ray"  # installed with the ray extra


@dataclass
class RayCluster:
    temp: Path
    port: int = field(default_factory=free_port)
    # every process seen in it: workers outlive a killed raylet, and are stopped too
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.2:{self.port}"

    def start_node(
        self, ip: str, zone: str, cost: str, head: bool = False, env: dict[str, str] | None = None
    ) -> None:
        """Start a node; ``env`` is added to its environment (its workers inherit it)."""
        where = ["--head", "--port", str(self.port)] if head else ["--address", self.address]
        result = subprocess.run(
            [str(RAY), "start", *where, "--node-ip-address", ip, "--num-cpus", "2",
             "--memory", str(2 * 1024**3), "--object-store-memory", str(200 * 1024**2),
             "--labels", f"zone={zone},instance_type=test.small,cost_per_hour={cost}",
             "--temp-dir", str(self.temp), "--disable-usage-stats",
             *(["--include-dashboard", "false"] if head else [])],
            capture_output=True, text=True, timeout=180, check=False,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: those naming its temp dir, and their descendants
        (workers rename themselves ``ray::...``, replicas are their children)."""
        roots = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(str(self.temp) in part for part in proc.info["cmdline"] or ()):
                    roots.append(proc)
            except psutil.Error:
                continue
        found = {p.pid: p for p in roots}
        for root in roots:
            try:
                found.update({c.pid: c for c in root.children(recursive=True)})
            except psutil.Error:
                continue
        self.seen.update(found)
        return list(found.values())

    def raylet(self, ip: str) -> psutil.Process:
        for proc in self.processes():
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if "raylet/raylet" in cmdline and f"--node_ip_address={ip}" in cmdline:
                return proc
        raise AssertionError(f"no raylet for {ip}")

    def stop(self) -> None:
        self.processes()
        procs = [p for p in self.seen.values() if p.is_running()]  # is_running checks pid reuse
        for proc in procs:
            try:
                proc.terminate()
            except psutil.Error:
                continue
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                continue


@contextmanager
def ray_cluster(nodes: int = 2, env: dict[str, str] | None = None) -> Iterator[RayCluster]:
    """Nodes 127.0.0.2 (head, zone-a, $0.10/h), 127.0.0.3 (zone-b, $0.20/h), ...; ``env`` is
    added to every node's environment."""
    # a short path: Ray's Unix sockets live under it
    # mkdtemp makes a private (0700) folder with a random name: safe in /tmp
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="mpray-", dir="/tmp")))  # nosec B108
    try:
        for n in range(nodes):
            zone = "zone-" + "abcdefgh"[n]
            cluster.start_node(f"127.0.0.{n + 2}", zone, f"{0.1 * (n + 1):.2f}", n == 0, env)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.temp, ignore_errors=True)


# ---- a tiny language model, made here: nothing is downloaded -----------------------------------
LLM_CORPUS = (
    "modelplane serves models behind the OpenAI API.",
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the ones before it.",
    "Continuous batching lets many streams share each decoding step.",
    "Hello! How can I help you today?",
    "The cat sat on the mat and looked at the moon.",
    "Tokens flow from the replica to the gateway as they are made.",
    "user: hello\nassistant: Hello! How can I help you today?",
)
LLM_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def tiny_llama(
    folder: str | Path, *, hidden: int = 64, layers: int = 2, steps: int = 100, seed: int = 0
) -> Path:
    """Write a small Llama-style causal language model to ``folder`` as ``save_pretrained``
    does (config, safetensors, a byte-level BPE tokenizer trained here on a short corpus, a chat
    template), trained ``steps`` steps on that corpus so its greedy output is not trivial. Needs
    torch and transformers (``pip install 'modelplane[llm]'``); about ten seconds."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))  # noqa: S106  # nosec B106
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    unk, bos, eos = "<unk>", "<s>", "</s>"  # nosec B105
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[unk, bos, eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    bpe.train_from_iterator(list(LLM_CORPUS) * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe, unk_token=unk, bos_token=bos, eos_token=eos
    )
    tokenizer.chat_template = LLM_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    samples = [torch.tensor([[1, *tokenizer.encode(t), 2]]) for t in LLM_CORPUS]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        ids = samples[step % len(samples)]
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()  # type: ignore[no-untyped-call]
    model.generation_config.pad_token_id = config.eos_token_id
    model.save_pretrained(out)
    return out


# ---- a small image classifier, made here ------------------------------------------------------
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digits_classifier(folder: str | Path, steps: int = 150) -> Path:
    """Train a small CNN on scikit-learn's 8x8 digits (as gray PNG levels: pixel / 255), export
    it to ``folder/model.onnx`` with ``labels.txt``, and write ``seven.png``, a held-out seven
    it classifies right. Push it with ``--preprocess image:resize=8,mode=L,normalize=unit
    --labels labels.txt``. Needs torch, scikit-learn and Pillow; a few seconds."""
    import warnings

    import numpy as np
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits(return_X_y=True)
    pixels = np.round(images.reshape(-1, 8, 8) * 255 / 16)
    x = torch.tensor(pixels[:1500, None] / 255, dtype=torch.float32)
    y = torch.tensor(labels[:1500])
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(288, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    model.eval()
    with warnings.catch_warnings():  # the TorchScript-based exporter: small, warns it is old
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:2],), str(out / "model.onnx"), input_names=["pixels"],
                          output_names=["logits"], dynamo=False,
                          dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}})  # fmt: skip
    (out / "labels.txt").write_text("\n".join(DIGIT_NAMES) + "\n")
    held = torch.tensor(pixels[1500:, None] / 255, dtype=torch.float32)
    with torch.no_grad():
        guessed = model(held).argmax(1).numpy()
    seven = next(i for i in range(len(held)) if labels[1500 + i] == 7 and guessed[i] == 7)
    Image.fromarray(pixels[1500 + seven].astype(np.uint8), "L").save(out / "seven.png")
    return out
