"""Serving benchmark: bare ONNX Runtime vs modelplane (JSON, binary, gRPC) vs MLServer, on the
same ONNX models, in one run. Load from wrk at 1, 16 and 64 connections.

    make bench                      # or: .venv/bin/python bench/serving.py [--duration 5]
    .venv/bin/python bench/serving.py --smoke --results DIR --work DIR

Writes bench/results/serving-<time>.json and .md and prints the table. Figures are only good as
ratios within one run: the machine is shared and the load generator runs on the same cores.
``--smoke`` runs modelplane's own path once, small and short, without MLServer: it checks the
benchmark works and measures nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import psutil

from modelplane.testing import free_port, iris_onnx, mlp_onnx, wait_for
from report import add_results_option, save

ROOT = Path(__file__).resolve().parent
WORK = ROOT / ".work"
BIN = Path(sys.executable).parent
MLSERVER_VENV = WORK / "mlserver-venv"


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full run, or a smoke run that only checks the path works."""

    duration: float  # seconds per load point (wrk takes whole seconds)
    bare_s: float  # seconds per bare ONNX Runtime loop
    connections: tuple[int, ...] = (1, 16, 64)
    batch_connections: tuple[int, ...] = (4, 16)
    mlp: tuple[int, ...] = (256, 1024, 1024, 1024, 10)
    rounds: int = 8  # paired on/off runs for the telemetry cost
    micro_calls: int = 200_000  # calls timed in process for the telemetry cost

    @classmethod
    def smoke(cls) -> Plan:
        return cls(1.0, 0.2, (4,), (4,), (16, 32, 4), rounds=1, micro_calls=2_000)


@dataclass
class Row:
    system: str
    model: str
    protocol: str
    connections: int
    batch: int
    requests_s: float
    samples_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    server_cpu_pct: float | None
    server_rss_mb: float | None


# ---- helpers ---------------------------------------------------------------------------------
def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found; installing Debian's package (needs root) ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False)
    found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed: apt-get install wrk")
    return found


def ensure_mlserver() -> Path:
    python = MLSERVER_VENV / "bin" / "python"
    if not (MLSERVER_VENV / "bin" / "mlserver").exists():
        print("installing MLServer 1.7.1 into bench/.work/mlserver-venv ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "mlserver==1.7.1", "uvloop<0.22",
             "onnxruntime", "numpy"],
            check=True,
        )  # fmt: skip
    return MLSERVER_VENV / "bin" / "mlserver"


class Tree:
    """CPU and memory of a process and its children."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def procs(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss_mb(self) -> float:
        total = 0
        for p in self.procs():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total / 2**20


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    found = re.match(r"([\d.]+)(us|ms|s)", text)
    if found is None:
        raise ValueError(f"not a wrk latency: {text!r}")
    return float(found.group(1)) * UNITS[found.group(2)]


def wrk(url: str, script: Path, connections: int, duration: float) -> dict[str, Any]:
    threads = min(2, connections)
    done = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk gave no result for {url}:\n{out}")
    rps = float(found.group(1))
    p50 = re.search(r"\s50%\s+([\d.]+\w+)", out)
    p99 = re.search(r"\s99%\s+([\d.]+\w+)", out)
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    total = re.search(r"(\d+) requests in", out)
    return {
        "requests_s": rps,
        "p50_ms": _ms(p50.group(1)) if p50 else None,
        "p99_ms": _ms(p99.group(1)) if p99 else None,
        "errors": errors,
        "requests": int(total.group(1)) if total else 0,
    }


def lua_script(path: Path, body: bytes, key: str, header_length: int | None) -> Path:
    body_file = path.with_suffix(".body")
    body_file.write_bytes(body)
    headers = [f'wrk.headers["Authorization"] = "Bearer {key}"']
    if header_length is None:
        headers.append('wrk.headers["Content-Type"] = "application/json"')
    else:
        headers.append('wrk.headers["Content-Type"] = "application/octet-stream"')
        headers.append(f'wrk.headers["Inference-Header-Content-Length"] = "{header_length}"')
    path.write_text(
        f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
        'wrk.method = "POST"\n' + "\n".join(headers) + "\n"
    )
    return path


def json_body(name: str, x: np.ndarray) -> bytes:
    tensor = {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def binary_body(name: str, x: np.ndarray) -> tuple[bytes, int]:
    blob = x.astype("<f4").tobytes()
    header = json.dumps(
        {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                     "parameters": {"binary_data_size": len(blob)}}],
         "parameters": {"binary_data_output": True}}
    ).encode()  # fmt: skip
    return header + blob, len(header)


def bare(model: bytes, feeds: dict[str, np.ndarray], seconds: float, threads: int = 1) -> float:
    """Samples per second of ONNX Runtime called in a loop, in this process."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    batch = int(next(iter(feeds.values())).shape[0])
    session.run(None, feeds)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, feeds)
        count += 1
    return count * batch / (time.perf_counter() - start)


# ---- the systems -----------------------------------------------------------------------------
class Modelplane:
    def __init__(self, work: Path, name: str = "modelplane", **env_extra: str) -> None:
        self.home = work / f"{name}-home"
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MODELPLANE_HOME": str(self.home), "MODELPLANE_URL": self.url,
               **env_extra}  # fmt: skip
        self.env = env
        self.log = (work / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [str(BIN / "modelplane"), "serve", "--port", str(self.port),
             "--grpc-port", str(self.grpc_port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(self._live, timeout=60)
        except BaseException:
            self.stop()
            raise
        self.key = (self.home / "admin.key").read_text().strip()
        self.tree = Tree(self.proc.pid)

    def _live(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def deploy(self, name: str, path: Path) -> None:
        for args in (["push", str(path), "--name", name], ["deploy", name]):
            subprocess.run([str(BIN / "modelplane"), *args], env=self.env, check=True,
                           capture_output=True)  # fmt: skip

    def replica_rss_mb(self, name: str) -> float:
        info = httpx.get(
            f"{self.url}/api/v1/deployments/{name}",
            headers={"Authorization": f"Bearer {self.key}"},
        ).json()
        return float(psutil.Process(info["replicas"][0]["pid"]).memory_info().rss / 2**20)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def start_servers(
    work: Path, prefix: str, envs: dict[str, dict[str, str]]
) -> dict[str, Modelplane]:
    """Modelplane servers (name -> extra environment) started side by side; none is left
    running when one fails to start."""
    with ThreadPoolExecutor(len(envs)) as pool:
        futures = {name: pool.submit(Modelplane, work, f"{prefix}{name}", **env)
                   for name, env in envs.items()}  # fmt: skip
    started = {name: f.result() for name, f in futures.items() if f.exception() is None}
    for future in futures.values():
        error = future.exception()
        if error is not None:
            for server in started.values():
                server.stop()
            raise error
    return started


class MLServer:
    def __init__(self, work: Path, models: dict[str, tuple[Path, dict[str, Any]]]) -> None:
        executable = ensure_mlserver()
        root = work / "mlserver-models"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "settings.json").write_text(json.dumps({
            "http_port": self.port, "grpc_port": free_port(), "metrics_port": free_port(),
        }))  # fmt: skip
        for name, (model, extra) in models.items():
            folder = root / name
            folder.mkdir()
            shutil.copy(model, folder / model.name)
            shutil.copy(ROOT / "mlserver_runtime.py", folder / "mlserver_runtime.py")
            settings = {
                "name": name,
                "implementation": "mlserver_runtime.OnnxModel",
                "parameters": {"uri": str(folder / model.name), "extra": extra.get("extra", {})},
                "max_batch_size": extra.get("max_batch_size", 32),
                "max_batch_time": extra.get("max_batch_time", 0.002),
            }
            (folder / "model-settings.json").write_text(json.dumps(settings))
        self.log = (work / "mlserver.log").open("wb")
        self.proc = subprocess.Popen(
            [str(executable), "start", str(root)], cwd=root, stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        names = list(models)
        wait_for(lambda: all(self._ready(n) for n in names), timeout=180, interval=0.5)
        self.tree = Tree(self.proc.pid)

    def _ready(self, name: str) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"MLServer exited; see {self.log.name}")
        try:
            r = httpx.get(f"{self.url}/v2/models/{name}/ready", timeout=1)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ---- gRPC load (no wrk for gRPC): a Python grpc.aio generator in a subprocess ----------------
GRPC_LOAD = r"""
import asyncio, sys, time, struct
import grpc
from modelplane.protocol.grpc import grpc_predict_v2_pb2 as pb
from modelplane.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
target, key, model, inp, shape, raw, conns, duration = sys.argv[1:9]
shape = [int(d) for d in shape.split(",")]
raw = bytes.fromhex(raw)
async def main():
    channel = grpc.aio.insecure_channel(target)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name=model)
    t = request.inputs.add(name=inp, datatype="FP32"); t.shape.extend(shape)
    request.raw_input_contents.append(raw)
    md = (("authorization", "Bearer " + key),)
    lat, errors = [], 0
    end = time.perf_counter() + float(duration)
    async def worker():
        nonlocal errors
        while time.perf_counter() < end:
            s = time.perf_counter()
            try:
                await stub.ModelInfer(request, metadata=md)
                lat.append(time.perf_counter() - s)
            except grpc.aio.AioRpcError:
                errors += 1
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(int(conns))))
    wall = time.perf_counter() - start
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else 0.0
    print(len(lat) / wall, p(0.5), p(0.99), errors)
asyncio.run(main())
"""


def grpc_load(
    mp: Modelplane, model: str, inp: str, x: np.ndarray, conns: int, duration: float
) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", GRPC_LOAD, f"127.0.0.1:{mp.grpc_port}", mp.key, model, inp,
         ",".join(map(str, x.shape)), x.astype("<f4").tobytes().hex(), str(conns),
         str(duration)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return {"requests_s": float(out[0]), "p50_ms": float(out[1]), "p99_ms": float(out[2]),
            "errors": int(out[3])}  # fmt: skip


# ---- the run ---------------------------------------------------------------------------------
def measure(system: str, model: str, protocol: str, conns: int, batch: int, tree: Tree,
            load: Any) -> Row:  # fmt: skip
    cpu0, t0 = tree.cpu_seconds(), time.perf_counter()
    result = load()
    wall = time.perf_counter() - t0
    cpu = (tree.cpu_seconds() - cpu0) / wall * 100
    row = Row(system, model, protocol, conns, batch, result["requests_s"],
              result["requests_s"] * batch, result["p50_ms"], result["p99_ms"],
              result["errors"], cpu, tree.rss_mb())  # fmt: skip
    print(f"  {system:<24} {model:<5} {protocol:<7} c={conns:<3} b={batch:<3} "
          f"{row.requests_s:>9.0f} req/s {row.samples_s:>9.0f} samples/s "
          f"p50={row.p50_ms or 0:.2f}ms p99={row.p99_ms or 0:.2f}ms errors={row.errors}",
          flush=True)  # fmt: skip
    return row


def run(plan: Plan, skip_mlserver: bool, work_root: Path) -> dict[str, Any]:
    ensure_wrk()
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=work_root))
    duration = plan.duration
    iris_path, mlp_path = work / "iris.onnx", work / "mlp.onnx"
    iris_path.write_bytes(iris_onnx())
    mlp_path.write_bytes(mlp_onnx(plan.mlp))
    rng = np.random.default_rng(0)
    x_iris = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    x_mlp = rng.random((1, plan.mlp[0]), dtype=np.float32)
    x_mlp32 = rng.random((32, plan.mlp[0]), dtype=np.float32)
    rows: list[Row] = []
    limits: dict[str, float] = {}

    print("bare ONNX Runtime, in process (1 thread):", flush=True)
    limits["iris_b1"] = bare(iris_path.read_bytes(), {"float_input": x_iris}, plan.bare_s)
    limits["mlp_b1"] = bare(mlp_path.read_bytes(), {"x": x_mlp}, plan.bare_s)
    limits["mlp_b32"] = bare(mlp_path.read_bytes(), {"x": x_mlp32}, plan.bare_s)
    limits["mlp_b32_2threads"] = bare(mlp_path.read_bytes(), {"x": x_mlp32}, plan.bare_s, 2)
    for k, v in limits.items():
        print(f"  {k:<18} {v:>10.0f} samples/s")

    memory: dict[str, float] = {}
    print("modelplane:", flush=True)
    mp = Modelplane(work)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(mp.deploy, ("iris", "mlp"), (iris_path, mlp_path)))
        time.sleep(1.0)
        memory["modelplane_iris_replica_idle_mb"] = mp.replica_rss_mb("iris")
        memory["modelplane_tree_idle_mb"] = mp.tree.rss_mb()
        for model, inp, x in (("iris", "float_input", x_iris), ("mlp", "x", x_mlp)):
            url = f"{mp.url}/v2/models/{model}/infer"
            js = lua_script(work / f"mp-{model}-json.lua", json_body(inp, x), mp.key, None)
            body, hlen = binary_body(inp, x)
            bn = lua_script(work / f"mp-{model}-bin.lua", body, mp.key, hlen)
            for c in plan.connections:
                rows.append(
                    measure(
                        "modelplane",
                        model,
                        "json",
                        c,
                        1,
                        mp.tree,
                        lambda js=js, c=c, url=url: wrk(url, js, c, duration),
                    )
                )
            for c in plan.connections:
                rows.append(
                    measure(
                        "modelplane",
                        model,
                        "binary",
                        c,
                        1,
                        mp.tree,
                        lambda bn=bn, c=c, url=url: wrk(url, bn, c, duration),
                    )
                )
            rows.append(
                measure(
                    "modelplane",
                    model,
                    "grpc",
                    16,
                    1,
                    mp.tree,
                    lambda m=model, i=inp, x=x: grpc_load(mp, m, i, x, 16, duration),
                )
            )
        body, hlen = binary_body("x", x_mlp32)
        bn32 = lua_script(work / "mp-mlp-bin32.lua", body, mp.key, hlen)
        url = f"{mp.url}/v2/models/mlp/infer"
        for c in plan.batch_connections:
            rows.append(measure("modelplane", "mlp", "binary", c, 32, mp.tree,
                                lambda c=c: wrk(url, bn32, c, duration)))  # fmt: skip
    finally:
        mp.stop()

    print("telemetry cost (request logs and per-request metrics on vs off, and a control on vs "
          f"on; iris JSON, 64 conns, {plan.rounds} rounds rotating the order, medians):",
          flush=True)  # fmt: skip
    result_overhead = telemetry_overhead(work, iris_path, x_iris, plan)
    o = result_overhead
    print(f"  server CPU per request: on {o['cpu_us_per_request_on']:.0f} us, off "
          f"{o['cpu_us_per_request_off']:.0f} us, cost {o['cost']:.1%}; throughput: on "
          f"{o['on']:.0f}, off {o['off']:.0f} req/s, cost {o['throughput_cost']:.1%}",
          flush=True)  # fmt: skip
    print(f"  control (on vs on, the noise left): CPU {o['control_cost']:+.1%}, throughput "
          f"{o['control_throughput']:+.1%}", flush=True)  # fmt: skip
    print(f"  in process: log line {o['log_us']:.2f} us + metrics {o['metrics_us']:.2f} us per "
          f"request = {o['micro_cost']:.1%} of the server CPU per request", flush=True)  # fmt: skip

    if skip_mlserver:
        print("MLServer skipped: the comparisons with it are not measured", flush=True)
    else:
        print("MLServer 1.7.1 (custom ONNX runtime, adaptive batching on):", flush=True)
        ml = MLServer(work, {
            "iris": (iris_path, {}),
            "mlp": (mlp_path, {}),
            "mlp1t": (mlp_path, {"extra": {"intra_op_threads": 1}}),
        })  # fmt: skip
        try:
            time.sleep(1.0)
            memory["mlserver_tree_idle_mb"] = ml.tree.rss_mb()
            for model, inp, x in (("iris", "float_input", x_iris), ("mlp", "x", x_mlp),
                                  ("mlp1t", "x", x_mlp)):  # fmt: skip
                url = f"{ml.url}/v2/models/{model}/infer"
                js = lua_script(work / f"ml-{model}-json.lua", json_body(inp, x), "none", None)
                for c in plan.connections if model != "mlp1t" else (16, 64):
                    rows.append(
                        measure(
                            "mlserver",
                            model,
                            "json",
                            c,
                            1,
                            ml.tree,
                            lambda js=js, c=c, url=url: wrk(url, js, c, duration),
                        )
                    )
        finally:
            ml.stop()

    return {"limits": limits, "memory": memory, "rows": [asdict(r) for r in rows],
            "duration_s": duration, "mlp": list(plan.mlp), "mlserver": not skip_mlserver,
            "telemetry": result_overhead}  # fmt: skip


def telemetry_microcost(work: Path, n: int) -> dict[str, float]:
    """CPU microseconds the per-request telemetry adds, timed in process on the code the server
    runs: the replica's JSON log line and the gateway's series (status counter, latency
    histogram; in flight is read from the gateway's queue counts at scrape time). Steady to a
    few percent, unlike a throughput difference."""
    from prometheus_client import CollectorRegistry

    from modelplane.telemetry.logs import LogWriter, RequestLog
    from modelplane.telemetry.metrics import Metrics

    writer = LogWriter(work / "micro.log", max_bytes=1 << 30)
    log = RequestLog(writer, "replica", "iris", "abcdef0123")
    series = Metrics(CollectorRegistry()).requests("iris", "1")

    def per_call(fn: Any) -> float:
        started = time.process_time()
        for i in range(n):
            fn(i)
        return (time.process_time() - started) / n * 1e6

    def log_line(i: int) -> None:
        log("info", f"req-{i}", "infer", {"status": 200, "ms": 0.123, "bytes_in": 96})

    def metrics(i: int) -> None:
        series.count(200)
        series.latency.observe(0.0004)

    empty = per_call(lambda i: None)
    result = {"log_us": per_call(log_line) - empty, "metrics_us": per_call(metrics) - empty}
    writer.close()
    return result


def telemetry_overhead(work: Path, iris_path: Path, x: np.ndarray, plan: Plan) -> dict[str, Any]:
    """Logs and per-request metrics on vs off, with a control: a second server with them on.
    Each round runs the three back to back in a rotating order; the medians of the paired
    ratios cancel most of a shared machine's drift, and the control's ratio (on vs on, which
    should be 0) shows how much noise is left in the same run."""
    off = {"MODELPLANE_TELEMETRY__REQUEST_LOG": "false",
           "MODELPLANE_TELEMETRY__REQUEST_METRICS": "false"}  # fmt: skip
    servers = start_servers(work, "telemetry-", {"on": {}, "off": off, "control": {}})
    rps: dict[str, list[float]] = {name: [] for name in servers}
    cpu: dict[str, list[float]] = {name: [] for name in servers}  # CPU us per request
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda server: server.deploy("iris", iris_path), servers.values()))
        body = json_body("float_input", x)
        scripts = {name: lua_script(work / f"tele-{name}.lua", body, server.key, None)
                   for name, server in servers.items()}  # fmt: skip
        names = list(servers)
        for round_ in range(plan.rounds):  # rotate which goes first
            for name in names[round_ % 3 :] + names[: round_ % 3]:
                server = servers[name]
                before = server.tree.cpu_seconds()
                url = f"{server.url}/v2/models/iris/infer"
                result = wrk(url, scripts[name], 64, plan.duration)
                used = server.tree.cpu_seconds() - before
                cpu[name].append(used / max(result["requests"], 1) * 1e6)
                rps[name].append(result["requests_s"])
    finally:
        for server in servers.values():
            server.stop()

    def more_cpu(a: str, b: str) -> float:
        return statistics.median(x / y - 1 for x, y in zip(cpu[a], cpu[b], strict=True))

    def slower(a: str, b: str) -> float:
        return statistics.median(1 - x / y for x, y in zip(rps[a], rps[b], strict=True))

    us_off = statistics.median(cpu["off"])
    micro = telemetry_microcost(work, plan.micro_calls)
    added = micro["log_us"] + micro["metrics_us"]
    return {"on": statistics.median(rps["on"]), "off": statistics.median(rps["off"]),
            "cpu_us_per_request_on": statistics.median(cpu["on"]),
            "cpu_us_per_request_off": us_off, "cost": more_cpu("on", "off"),
            "throughput_cost": slower("on", "off"), "control_cost": more_cpu("control", "on"),
            "control_throughput": slower("control", "on"), "rounds": plan.rounds, **micro,
            "micro_cost": added / us_off}  # fmt: skip


def best(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return max(found, key=lambda r: r["requests_s"]) if found else None


def targets(result: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    rows, limits, memory = result["rows"], result["limits"], result["memory"]
    out: list[tuple[str, str, bool | None]] = []

    def ratio(name: str, a: dict[str, Any] | None, b: dict[str, Any] | None, need: float) -> None:
        if a is None or b is None:
            out.append((name, "not measured", None))
            return
        value = a["requests_s"] / b["requests_s"]
        out.append((name, f"{value:.1f}x (target >= {need:g}x)", value >= need))

    mp = {"system": "modelplane", "protocol": "json", "connections": 64}
    ml = {"system": "mlserver", "protocol": "json", "connections": 64}
    ratio("iris 64 conns JSON vs MLServer", best(rows, model="iris", **mp),
          best(rows, model="iris", **ml), 5)  # fmt: skip
    ratio("MLP 64 conns JSON vs MLServer", best(rows, model="mlp", **mp),
          best(rows, model="mlp", **ml), 5)  # fmt: skip
    ratio("MLP 64 conns JSON vs MLServer (ORT 1 thread)", best(rows, model="mlp", **mp),
          best(rows, model="mlp1t", **ml), 5)  # fmt: skip
    b32 = best(rows, system="modelplane", model="mlp", protocol="binary", batch=32)
    if b32:
        share = b32["samples_s"] / limits["mlp_b32"]
        out.append(("MLP binary batch 32 vs bare ORT batch 32",
                    f"{share:.0%} (target >= 25%)", share >= 0.25))  # fmt: skip
    for model in ("iris", "mlp"):
        a = best(rows, system="modelplane", model=model, protocol="json", connections=16)
        b = best(rows, system="mlserver", model=model, protocol="json", connections=16)
        if a and b:
            out.append((f"p99 at 16 conns, {model}", f"{a['p99_ms']:.2f} ms vs MLServer "
                        f"{b['p99_ms']:.2f} ms", a["p99_ms"] < b["p99_ms"]))  # fmt: skip
    tele = result.get("telemetry")
    if tele:
        out.append(("request logs + metrics cost (server CPU per request, iris JSON, 64 conns)",
                    f"{tele['cost']:.1%} (target <= 5%)", tele["cost"] <= 0.05))  # fmt: skip
        slower = tele["throughput_cost"]
        out.append(("throughput cost of request logs + metrics (median of paired rounds)",
                    f"{slower:.1%} (target <= 5%)", slower <= 0.05))  # fmt: skip
        noise = f"CPU {tele['control_cost']:+.1%}, throughput {tele['control_throughput']:+.1%}"
        out.append(("noise left in that measurement (control: on vs on)", noise, None))
        micro = tele["micro_cost"]
        out.append(("request logs + metrics cost (timed in process, share of CPU per request)",
                    f"{micro:.1%} (target <= 5%)", micro <= 0.05))  # fmt: skip
    idle = memory.get("modelplane_iris_replica_idle_mb")
    if idle is not None:
        out.append(("idle RSS of one iris replica", f"{idle:.0f} MB (target < 150 MB)",
                    idle < 150))  # fmt: skip
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["| system | model | protocol | conns | batch | req/s | samples/s | p50 ms | p99 ms "
             "| errors | server CPU % | server RSS MB |", "|" + " --- |" * 12]  # fmt: skip
    for r in result["rows"]:
        lines.append(
            f"| {r['system']} | {r['model']} | {r['protocol']} | {r['connections']} | "
            f"{r['batch']} | {r['requests_s']:.0f} | {r['samples_s']:.0f} | "
            f"{r['p50_ms'] or 0:.2f} | {r['p99_ms'] or 0:.2f} | {r['errors']} | "
            f"{r['server_cpu_pct'] or 0:.0f} | {r['server_rss_mb'] or 0:.0f} |"
        )
    lines += ["", "| bare ONNX Runtime, in process | samples/s |", "| --- | --- |"]
    lines += [f"| {k} | {v:.0f} |" for k, v in result["limits"].items()]
    lines += ["", "| memory | MB |", "| --- | --- |"]
    lines += [f"| {k} | {v:.0f} |" for k, v in result["memory"].items()]
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    for name, value, ok in result["targets"]:
        lines.append(f"| {name} | {value} | {'yes' if ok else 'no' if ok is False else '-'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load point")
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="modelplane only, tiny, short")
    parser.add_argument("--work", type=Path, default=WORK, help="for the servers' homes and logs")
    add_results_option(parser)
    args = parser.parse_args()
    plan = Plan.smoke() if args.smoke else Plan(args.duration, args.duration)
    result = run(plan, args.skip_mlserver or args.smoke, args.work)
    result["targets"] = targets(result)
    save("serving", result, markdown(result), args.results)


if __name__ == "__main__":
    main()
