"""Helpers for users' own tests (and ours): small models built in code, free ports, polling."""

from __future__ import annotations

import itertools
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

import onnx
import psutil
from onnx import TensorProto, helper

from modelplane.convert.onnx import ONNX_TO_V2
from modelplane.demo import iris_onnx, train_iris

__all__ = [
    "IRIS_REQUEST",
    "RayCluster",
    "free_port",
    "identity_onnx",
    "iris_onnx",
    "mlp_onnx",
    "multi_identity_onnx",
    "ray_cluster",
    "train_iris",
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


def mlp_onnx(sizes: Sequence[int] = (256, 1024, 1024, 1024, 10), seed: int = 0) -> bytes:
    """A fully connected FP32 network (MatMul, Add, Relu) with random weights: input ``x``
    [N, sizes[0]], output ``y`` [N, sizes[-1]]."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    current = "x"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
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

    def start_node(self, ip: str, zone: str, cost: str, head: bool = False) -> None:
        where = ["--head", "--port", str(self.port)] if head else ["--address", self.address]
        result = subprocess.run(
            [str(RAY), "start", *where, "--node-ip-address", ip, "--num-cpus", "2",
             "--memory", str(2 * 1024**3), "--object-store-memory", str(200 * 1024**2),
             "--labels", f"zone={zone},instance_type=test.small,cost_per_hour={cost}",
             "--temp-dir", str(self.temp), "--disable-usage-stats",
             *(["--include-dashboard", "false"] if head else [])],
            capture_output=True, text=True, timeout=180, check=False,
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
def ray_cluster(nodes: int = 2) -> Iterator[RayCluster]:
    """Nodes 127.0.0.2 (head, zone-a, $0.10/h), 127.0.0.3 (zone-b, $0.20/h), ..."""
    # a short path: Ray's Unix sockets live under it
    # mkdtemp makes a private (0700) folder with a random name: safe in /tmp
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="mpray-", dir="/tmp")))  # nosec B108
    try:
        for n in range(nodes):
            zone = "zone-" + "abcdefgh"[n]
            cluster.start_node(f"127.0.0.{n + 2}", zone, f"{0.1 * (n + 1):.2f}", head=n == 0)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.temp, ignore_errors=True)
