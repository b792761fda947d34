"""Quota benchmark: what a key's limits cost on the hot path when they are configured but not
reached.

    .venv/bin/python bench/quotas.py [--rounds 5] [--seconds 5] [--connections 64] [--smoke]
                                     [--results DIR]

One modelplane server (``serve --demo``: iris, one replica) and wrk posting iris over V2 JSON.
Three keys: two without limits (``free-a``, ``free-b``: an A/A pair, so the table shows the
noise of this machine) and one with a rate, a burst, a concurrency limit and a daily budget all
far above the load (``limited``: every check runs, none refuses). Each round runs the A/A pair,
then ``free-a`` against ``limited``, in alternating order; the table has each key's medians
over the rounds and the cost: 1 - limited / free-a (and the A/A difference beside it).

Writes bench/results/quotas-<time>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from modelplane.testing import IRIS_REQUEST, free_port, wait_for
from report import add_results_option, save

BIN = Path(sys.executable).parent
FAR_ABOVE = {"rate_limit": 1e6, "burst": 1_000_000, "max_concurrent": 100_000,
             "daily": 1_000_000_000}  # fmt: skip
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    found = re.match(r"([\d.]+)(us|ms|s)", text)
    if found is None:
        raise ValueError(f"not a wrk latency: {text!r}")
    return float(found.group(1)) * UNITS[found.group(2)]


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, Any]:
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk gave no result for {url}:\n{out}")
    p50 = re.search(r"\s50%\s+([\d.]+\w+)", out)
    p99 = re.search(r"\s99%\s+([\d.]+\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_s": float(rps.group(1)),
        "p50_ms": _ms(p50.group(1)) if p50 else None,
        "p99_ms": _ms(p99.group(1)) if p99 else None,
        "errors": int(errors.group(1)) if errors else 0,
    }


def lua(path: Path, body: Path, key: str) -> Path:
    path.write_text(
        f'local f = io.open("{body}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    return path


class Server:
    """``modelplane serve --demo`` on free ports; ready once iris answers."""

    def __init__(self, work: Path) -> None:
        self.home = work / "home"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
        env.update(MODELPLANE_HOME=str(self.home), MODELPLANE_URL=self.url)
        self.log = (work / "serve.log").open("wb")
        self.proc = subprocess.Popen(
            [str(BIN / "modelplane"), "serve", "--demo", "--port", str(self.port),
             "--grpc-port", str(free_port())],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(self._ready, timeout=180)
        except BaseException:
            self.stop()
            raise
        self.admin = (self.home / "admin.key").read_text().strip()

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited with {self.proc.returncode}; see {self.log.name}")
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def key(self, name: str, **limits: Any) -> str:
        made = httpx.post(
            f"{self.url}/api/v1/keys", json={"name": name, "role": "invoker", **limits},
            headers={"Authorization": f"Bearer {self.admin}"}, timeout=30,
        )  # fmt: skip
        made.raise_for_status()
        secret: str = made.json()["secret"]
        return secret

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run(rounds: int, seconds: int, connections: int, work: Path) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk (or `make system-deps` as root)")
    server = Server(work)
    try:
        body = work / "iris.json"
        body.write_bytes(httpx.Request("POST", "/", json=IRIS_REQUEST).read())
        scripts = {
            "free-a": lua(work / "free-a.lua", body, server.key("free-a")),
            "free-b": lua(work / "free-b.lua", body, server.key("free-b")),
            "limited": lua(work / "limited.lua", body, server.key("limited", **FAR_ABOVE)),
        }
        url = f"{server.url}/v2/models/iris/infer"
        wrk(url, scripts["free-a"], connections, 1)  # warm-up, not counted
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in scripts}
        for i in range(rounds):
            pairs = [("free-a", "free-b"), ("free-a", "limited")]
            for pair in pairs if i % 2 == 0 else [p[::-1] for p in reversed(pairs)]:
                for name in pair:
                    runs[name].append(wrk(url, scripts[name], connections, seconds))
            print(f"round {i + 1}/{rounds}: "
                  + ", ".join(f"{n} {r[-1]['requests_s']:.0f}/s" for n, r in runs.items()),
                  flush=True)  # fmt: skip
    finally:
        server.stop()
    return {"rounds": rounds, "seconds": seconds, "connections": connections, "runs": runs}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = raw["runs"]
    rows = []
    for name, results in runs.items():
        p50 = [r["p50_ms"] for r in results if r["p50_ms"] is not None]
        p99 = [r["p99_ms"] for r in results if r["p99_ms"] is not None]
        rows.append({
            "key": name,
            "limits": FAR_ABOVE if name == "limited" else None,
            "runs": len(results),
            "requests_s": statistics.median(r["requests_s"] for r in results),
            "p50_ms": statistics.median(p50) if p50 else None,
            "p99_ms": statistics.median(p99) if p99 else None,
            "errors": sum(r["errors"] for r in results),
        })  # fmt: skip
    # free-a runs twice a round, once beside free-b and once beside limited: compare each run
    # with the free-a run of its own pair (load on a shared machine drifts between rounds)
    a = runs["free-a"]
    beside_limited = [a[2 * i + (1 if i % 2 == 0 else 0)] for i in range(len(runs["limited"]))]
    beside_b = [a[2 * i + (0 if i % 2 == 0 else 1)] for i in range(len(runs["free-b"]))]

    def cost(runs_x: list[dict[str, Any]], base: list[dict[str, Any]]) -> tuple[float, float]:
        paired = statistics.median(1 - x["requests_s"] / b["requests_s"]
                                   for x, b in zip(runs_x, base, strict=True))  # fmt: skip
        medians = 1 - (statistics.median(x["requests_s"] for x in runs_x)
                       / statistics.median(b["requests_s"] for b in base))  # fmt: skip
        return round(100 * paired, 2), round(100 * medians, 2)

    cost_pct, cost_medians_pct = cost(runs["limited"], beside_limited)
    control_pct, control_medians_pct = cost(runs["free-b"], beside_b)
    return {
        **{k: v for k, v in raw.items() if k != "runs"},
        "rows": rows,
        "cost_pct": cost_pct,  # median over rounds of 1 - limited / free-a (same pair)
        "cost_medians_pct": cost_medians_pct,
        "control_pct": control_pct,  # the same for the A/A pair: this machine's noise
        "control_medians_pct": control_medians_pct,
        "runs": runs,
    }


def table(result: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        f"Quota cost: iris over V2 JSON, wrk at {result['connections']} connections, "
        f"{result['rounds']} rounds of {result['seconds']} s, medians",
        "",
        "| key | limits | requests/s | p50 (ms) | p99 (ms) | non-2xx |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        limits = "none" if row["limits"] is None else "rate, burst, concurrency, daily (far above)"
        lines.append(f"| {row['key']} | {limits} | {row['requests_s']:,.0f} | "
                     f"{ms(row['p50_ms'])} | {ms(row['p99_ms'])} | {row['errors']} |")  # fmt: skip
    lines += [
        "",
        f"cost of limits not reached: {result['cost_pct']:+.1f}% of requests/s (median of the "
        f"rounds' pairs; medians of the same runs: {result['cost_medians_pct']:+.1f}%); A/A "
        f"control free-b vs free-a: {result['control_pct']:+.1f}% "
        f"({result['control_medians_pct']:+.1f}%); the goal is under 5%",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run (whole seconds)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="one round of 1 s (for tests)")
    add_results_option(parser)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.seconds = 1, 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="modelplane-bench-quotas-") as work:
        raw = run(args.rounds, args.seconds, args.connections, Path(work))
    result = summarize(raw)
    result["wall_s"] = round(time.monotonic() - started, 1)
    save("quotas", result, table(result), args.results)


if __name__ == "__main__":
    main()
