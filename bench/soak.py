"""Soak: steady load at about 70% of measured capacity for a long while, with deploy/undeploy
churn and requests for unknown model names, sampled every minute; none of what is sampled may
trend upward beyond noise.

    .venv/bin/python bench/soak.py [--minutes 10] [--sample-s 60] [--churn-s 5] [--smoke]
                                   [--results DIR]

One modelplane server (``serve --demo``: iris, one replica). First a closed-loop run measures
what this machine serves (16 requests in flight, V2 JSON); then an open-loop generator sends
70% of that rate, one request in 20 for a random unknown model name (each must get 404), while
another model is deployed (waiting for its replica) and undeployed every ``--churn-s``. Each
sample: requests/s, p99 latency, failures, RSS and open files of the server and of the iris
replica (and of every other process of the server's), and the number of series on /metrics.

A series is flat when its rise over the run (the median of its last third of samples less that
of its first, the warm-up sample left out) stays within its noise allowance; the run exits 1
when one is not (``--smoke``: never).
Writes bench/results/soak-<time>.json, .md and .png (the samples plotted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from modelplane.client import Client
from modelplane.testing import IRIS_REQUEST, identity_onnx
from quotas import Server
from report import add_results_option, save

CALIBRATE_IN_FLIGHT = 16
MAX_IN_FLIGHT = 64  # the open loop skips (and counts) a request rather than queue more
UNKNOWN_SHARE = 0.05
# what a series may rise over the run, by name: (share of its median, absolute floor)
ALLOWANCE = {
    "server_rss_mb": (0.10, 16.0), "replica_rss_mb": (0.10, 16.0),
    "server_fds": (0.0, 8.0), "replica_fds": (0.0, 8.0),
    "metric_series": (0.05, 20.0), "p99_ms": (0.5, 5.0),
}  # fmt: skip


@dataclass
class Window:
    """What the load saw since the last sample."""

    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)  # of the failed (0: no answer)
    unknown_404: int = 0
    unknown_other: int = 0
    skipped: int = 0


class Load:
    """An open-loop generator on its own event loop: ``rate`` requests/s, whatever the answers."""

    def __init__(self, url: str, key: str, rate: float) -> None:
        self.url, self.key, self.rate = url, key, rate
        self._window = Window()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def take(self) -> Window:
        with self._lock:
            window, self._window = self._window, Window()
        return window

    async def _one(self, client: httpx.AsyncClient, unknown: bool) -> None:
        name = f"nope-{random.getrandbits(48):x}" if unknown else "iris"  # nosec B311
        start = time.perf_counter()
        try:
            status = (await client.post(f"/v2/models/{name}/infer", json=IRIS_REQUEST)).status_code
        except httpx.HTTPError:
            status = 0
        elapsed = (time.perf_counter() - start) * 1e3
        with self._lock:
            w = self._window
            if unknown:
                w.unknown_404 += status == 404
                w.unknown_other += status != 404
            elif status == 200:
                w.latencies_ms.append(elapsed)
            else:
                w.failed += 1
                w.statuses[status] = w.statuses.get(status, 0) + 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        in_flight: set[asyncio.Task[None]] = set()
        limits = httpx.Limits(max_connections=MAX_IN_FLIGHT)
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, limits=limits,
                                     timeout=30) as client:  # fmt: skip
            due = loop.time()
            while not self._stop.is_set():
                due += 1 / self.rate
                await asyncio.sleep(max(0.0, due - loop.time()))
                if len(in_flight) >= MAX_IN_FLIGHT:
                    with self._lock:
                        self._window.skipped += 1
                    continue
                unknown = random.random() < UNKNOWN_SHARE  # nosec B311
                task = asyncio.create_task(self._one(client, unknown))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.gather(*in_flight)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def capacity(url: str, key: str, seconds: float) -> float:
    """Requests/s with ``CALIBRATE_IN_FLIGHT`` requests always in flight (this generator's
    closed loop on this machine, beside the server)."""

    async def run() -> int:
        done = 0
        deadline = time.monotonic() + seconds
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:

            async def worker() -> None:
                nonlocal done
                while time.monotonic() < deadline:
                    reply = await client.post("/v2/models/iris/infer", json=IRIS_REQUEST)
                    done += reply.status_code == 200

            await asyncio.gather(*(worker() for _ in range(CALIBRATE_IN_FLIGHT)))
        return done

    return asyncio.run(run()) / seconds


class Churn:
    """Deploys and undeploys ``name`` every ``period`` seconds in a thread; counts cycles."""

    def __init__(self, client: Client, name: str, period: float) -> None:
        self.client, self.name, self.period = client, name, period
        self.cycles, self.errors = 0, 0
        # held while the model is deployed: what must be back where it was after an undeploy
        # (the /metrics series) is counted under it
        self.undeployed = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.undeployed:
                    self.client.deploy(self.name, timeout=60)
                    self._stop.wait(self.period)
                    self.client.undeploy(self.name)
                self.cycles += 1
            except Exception as exc:  # counted and shown: a soak must not stop on one
                self.errors += 1
                print(f"churn: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._stop.wait(self.period)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def _usage(proc: psutil.Process) -> tuple[float, int]:
    with contextlib.suppress(psutil.Error):
        return proc.memory_info().rss / 2**20, proc.num_fds()
    return 0.0, 0


def series(server: Server) -> int:
    """How many series /metrics shows."""
    text = httpx.get(f"{server.url}/metrics", timeout=30,
                     headers={"Authorization": f"Bearer {server.admin}"}).text  # fmt: skip
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def sample(server: Server, client: Client, window: Window, elapsed_s: float, seconds: float,
           metric_series: int) -> dict[str, Any]:  # fmt: skip
    """One sample: the load's window and every process of the server."""
    root = psutil.Process(server.proc.pid)
    replica_pid = client.deployment("iris")["replicas"][0]["pid"]
    others: dict[str, dict[str, float]] = {}
    with contextlib.suppress(psutil.Error):
        for child in root.children(recursive=True):
            if child.pid != replica_pid:
                rss, fds = _usage(child)
                others[str(child.pid)] = {"rss_mb": round(rss, 1), "fds": fds}
    server_rss, server_fds = _usage(root)
    replica_rss, replica_fds = _usage(psutil.Process(replica_pid))
    latencies = sorted(window.latencies_ms)
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0
    return {
        "t_s": round(elapsed_s, 1), "requests_s": round(len(latencies) / seconds, 1),
        "p99_ms": round(p99, 2), "failed": window.failed,
        "failed_statuses": window.statuses, "skipped": window.skipped,
        "unknown_404": window.unknown_404, "unknown_other": window.unknown_other,
        "server_rss_mb": round(server_rss, 1), "server_fds": server_fds,
        "replica_rss_mb": round(replica_rss, 1), "replica_fds": replica_fds,
        "metric_series": metric_series, "other_processes": others,
    }  # fmt: skip


def rise(values: list[float]) -> float:
    """How much ``values`` rose over the run: the median of the last third less that of the
    first (a lone spike moves neither median; a leak moves the last)."""
    third = max(1, len(values) // 3)
    return statistics.median(values[-third:]) - statistics.median(values[:third])


def verdicts(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per series: its rise over the run, what it may rise, and whether it stayed flat."""
    judged = samples[1:]  # the first sample is the warm-up
    result = {}
    for name, (share, floor) in ALLOWANCE.items():
        values = [float(s[name]) for s in judged]
        enough = len(values) >= 3
        allowed = max(share * statistics.median(values), floor) if values else floor
        up = rise(values) if enough else 0.0
        result[name] = {"rise": round(up, 2), "allowed": round(allowed, 2),
                        "flat": up <= allowed, "judged": enough}  # fmt: skip
    return result


def plot(samples: list[dict[str, Any]], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t_s"] / 60 for s in samples]
    panels = [("memory (MiB)", ["server_rss_mb", "replica_rss_mb"]),
              ("open files", ["server_fds", "replica_fds"]),
              ("/metrics series", ["metric_series"]), ("p99 latency (ms)", ["p99_ms"]),
              ("requests/s", ["requests_s"])]  # fmt: skip
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 11), sharex=True)
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            ax.plot(minutes, [s[name] for s in samples], marker="o", label=name)
        ax.set_ylabel(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=8)
    axes[-1].set_xlabel("minutes")
    figure.suptitle("modelplane soak: iris at 70% of capacity, churn, unknown names")
    figure.tight_layout()
    figure.savefig(target, dpi=90)
    plt.close(figure)


def markdown(result: dict[str, Any]) -> str:
    rows = ["| minute | requests/s | p99 (ms) | failed | server RSS (MiB) | replica RSS (MiB) "
            "| server files | replica files | /metrics series |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in result["samples"]:
        rows.append(
            f"| {s['t_s'] / 60:.1f} | {s['requests_s']:,.0f} | {s['p99_ms']:.1f} | {s['failed']} "
            f"| {s['server_rss_mb']:.0f} | {s['replica_rss_mb']:.0f} | {s['server_fds']} "
            f"| {s['replica_fds']} | {s['metric_series']} |"
        )
    rows.append("")
    rows.append("| series | rise over the run | allowed | flat |")
    rows.append("|---|---|---|---|")
    for name, v in result["verdicts"].items():
        flat = ("yes" if v["flat"] else "NO") if v["judged"] else "too short to judge"
        rows.append(f"| {name} | {v['rise']:+g} | {v['allowed']:g} | {flat} |")
    rows.append("")
    rows.append(
        f"Capacity {result['capacity_s']:,.0f} requests/s (closed loop, "
        f"{CALIBRATE_IN_FLIGHT} in flight); load {result['rate_s']:,.0f}/s for "
        f"{result['minutes']:g} min, {result['churn']['cycles']} deploy/undeploy cycles "
        f"({result['churn']['errors']} failed), {result['unknown_404']} unknown-name requests "
        f"answered 404 ({result['unknown_other']} otherwise)."
    )
    return "\n".join(rows) + "\n"


def run(minutes: float, sample_s: float, churn_s: float, calibrate_s: float,
        work: Path) -> dict[str, Any]:  # fmt: skip
    server = Server(work)
    try:
        with Client(server.url, server.admin) as client:
            model = work / "churn.onnx"
            model.write_bytes(identity_onnx("FP32", (None, 4)))
            client.push(model, "churn", allow_duplicate=True)
            cap = capacity(server.url, server.admin, calibrate_s)
            rate = 0.7 * cap
            samples: list[dict[str, Any]] = []
            start = time.monotonic()
            with (
                Load(server.url, server.admin, rate) as load,
                Churn(client, "churn", churn_s) as churn,
            ):
                while (elapsed := time.monotonic() - start) < minutes * 60 - 1e-6:
                    time.sleep(min(sample_s, minutes * 60 - elapsed))
                    with churn.undeployed:  # series counted with the churned model undeployed
                        count = series(server)
                    now = time.monotonic() - start  # the window is taken now: its length
                    since = now - (samples[-1]["t_s"] if samples else 0.0)
                    samples.append(sample(server, client, load.take(), now, since, count))
                    print(f"{now / 60:5.1f} min: {samples[-1]['requests_s']:7.1f}/s, p99 "
                          f"{samples[-1]['p99_ms']:.1f} ms", flush=True)  # fmt: skip
    finally:
        server.stop()
    return {
        "minutes": minutes, "sample_s": sample_s, "capacity_s": round(cap, 1),
        "rate_s": round(rate, 1), "samples": samples, "verdicts": verdicts(samples),
        "churn": {"period_s": churn_s, "cycles": churn.cycles, "errors": churn.errors},
        "unknown_404": sum(s["unknown_404"] for s in samples),
        "unknown_other": sum(s["unknown_other"] for s in samples),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample-s", type=float, default=60.0)
    parser.add_argument("--churn-s", type=float, default=5.0)
    parser.add_argument("--calibrate-s", type=float, default=10.0)
    parser.add_argument("--smoke", action="store_true", help="30 s, sampled every 6 s")
    add_results_option(parser)
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.sample_s, args.churn_s, args.calibrate_s = 0.5, 6.0, 2.0, 2.0
    with tempfile.TemporaryDirectory(prefix="mp-soak-") as work:
        result = run(args.minutes, args.sample_s, args.churn_s, args.calibrate_s, Path(work))
    written = save("soak", result, markdown(result), args.results)
    plot(result["samples"], written.with_suffix(".png"))
    print(f"plot: {written.with_suffix('.png')}")
    flat = all(v["flat"] for v in result["verdicts"].values())
    if not flat and not args.smoke:
        sys.exit(
            "not flat: " + ", ".join(n for n, v in result["verdicts"].items() if not v["flat"])
        )


if __name__ == "__main__":
    main()
