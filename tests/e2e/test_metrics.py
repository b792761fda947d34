"""/metrics after known traffic, and a real Prometheus (Debian's package) scraping it."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelplane.testing import IRIS_REQUEST, free_port, wait_for

pytestmark = pytest.mark.e2e

GOOD = IRIS_REQUEST
BAD = {"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "INT64",
                   "data": [5, 3, 1, 0]}]}  # fmt: skip


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    matches = [v for (n, ls), v in metrics.items()
               if n == name and all((k, v2) in ls for k, v2 in labels.items())]  # fmt: skip
    assert matches, f"no sample {name} {labels}"
    return sum(matches)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, iris_bytes) -> Any:
    from tests.e2e.conftest import Server

    server = Server(tmp_path_factory.mktemp("metrics") / "home")
    try:
        server.start()
        path = server.home.parent / "iris.onnx"
        path.write_bytes(iris_bytes)
        assert server.cli("push", str(path), "--name", "iris").returncode == 0
        assert server.cli("deploy", "iris").returncode == 0
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as client:
            for _ in range(37):
                assert client.post("/v2/models/iris/infer", json=GOOD).status_code == 200
            for _ in range(5):
                assert client.post("/v2/models/iris/infer", json=BAD).status_code == 400
            for i in range(3):
                assert client.post(f"/v2/models/ghost{i}/infer", json=GOOD).status_code == 404
        yield server
    finally:
        server.stop()


def test_metrics_count_what_was_sent(loaded) -> None:
    assert httpx.get(f"{loaded.url}/metrics").status_code == 401
    response = httpx.get(f"{loaded.url}/metrics", headers=loaded.auth)
    assert response.status_code == 200
    m = samples(response.text)
    assert value(m, "modelplane_requests_total", model="iris", version="1", code="200") == 37
    assert value(m, "modelplane_requests_total", model="iris", code="400") == 5
    assert value(m, "modelplane_requests_unrouted_total", code="404") == 3
    assert not any("ghost" in str(labels) for _, labels in m)  # unknown names make no series
    assert value(m, "modelplane_request_duration_seconds_count", model="iris") == 42
    assert value(m, "modelplane_replica_request_seconds_count", model="iris") == 42
    assert value(m, "modelplane_replica_compute_seconds_count", model="iris") >= 1
    assert value(m, "modelplane_batch_size_sum", model="iris") == 37  # rows that ran
    assert value(m, "modelplane_model_load_seconds", model="iris") > 0
    assert value(m, "modelplane_replica_network_received_bytes_total", model="iris") > 0
    assert value(m, "modelplane_replicas", state="ready") == 1
    assert value(m, "modelplane_node_memory_total_bytes") == psutil.virtual_memory().total
    assert value(m, "modelplane_node_open_fds") > 0
    assert value(m, "modelplane_replica_queue_depth", model="iris") == 0  # idle now
    events = loaded.deployment("iris")["events"]
    assert [e["action"] for e in events] == ["start"]


def test_replica_memory_agrees_with_psutil(loaded) -> None:
    [replica] = loaded.deployment("iris")["replicas"]
    text = httpx.get(f"{loaded.url}/metrics", headers=loaded.auth).text
    reported = value(samples(text), "modelplane_replica_resident_memory_bytes", model="iris")
    actual = psutil.Process(replica["pid"]).memory_info().rss
    assert abs(reported - actual) / actual < 0.10


def test_a_real_prometheus_scrapes_it(loaded, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package is needed: apt-get install prometheus"
    port = free_port()
    (tmp_path / "key").write_text(loaded.key)
    (tmp_path / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: modelplane
    authorization:
      credentials_file: {tmp_path / "key"}
    static_configs:
      - targets: ["127.0.0.1:{loaded.port}"]
""")
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        query = 'sum(modelplane_requests_total{model="iris",code="200"})'

        def scraped() -> bool:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query})
            except httpx.HTTPError:
                return False
            result = r.json()["data"]["result"] if r.status_code == 200 else []
            return bool(result) and float(result[0]["value"][1]) == 37

        wait_for(scraped, timeout=60, interval=0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_logs_follow_requests_with_their_ids(loaded) -> None:
    import queue
    import subprocess as sp
    import sys
    import threading

    follower = sp.Popen(
        [str(Path(sys.executable).parent / "modelplane"), "deployments", "logs", "iris",
         "--follow", "--since", "10m"],
        env=loaded._env(), stdout=sp.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    out = follower.stdout
    assert out is not None

    def read() -> None:
        for line in out:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # the follower replays the last 10 minutes, then follows: whenever it subscribes, it
        # shows both requests, each with its id
        response = httpx.post(f"{loaded.url}/v2/models/iris/infer", headers=loaded.auth,
                              json=GOOD, timeout=30)  # fmt: skip
        generated = response.headers["x-request-id"]
        mine = httpx.post(
            f"{loaded.url}/v2/models/iris/infer",
            headers={**loaded.auth, "X-Request-Id": "trace-me-7"},
            json=BAD,
            timeout=30,
        )
        assert mine.headers["x-request-id"] == "trace-me-7"
        seen: list[str] = []
        while not any("trace-me-7" in line for line in seen):
            seen.append(lines.get(timeout=60))  # raises queue.Empty if the line never comes
        assert any(generated in line and "status=200" in line for line in seen)
        assert any("trace-me-7" in line and "status=400" in line for line in seen)
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        reader.join(timeout=10)  # it ends with the output
        out.close()
    # the same records through the API, filtered
    records = httpx.get(f"{loaded.url}/api/v1/deployments/iris/logs", headers=loaded.auth,
                        params={"level": "warning", "since": "10m"}).json()  # fmt: skip
    assert any(r["request_id"] == "trace-me-7" for r in records)
    assert all(r["level"] in ("warning", "error", "critical") for r in records)
    assert not any(loaded.key in str(r) for r in records)  # keys never reach the logs


def test_replica_cpu_agrees_with_psutil(loaded) -> None:
    import threading

    [replica] = loaded.deployment("iris")["replicas"]
    proc = psutil.Process(replica["pid"])
    httpx.get(f"{loaded.url}/metrics", headers=loaded.auth)  # starts the measured interval
    before, start = proc.cpu_times(), time.monotonic()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=loaded.url, headers=loaded.auth, timeout=30) as client:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    client.post("/v2/models/iris/infer", json=GOOD)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(6.0)  # long enough that the two windows' few ms of offset are noise
    stop.set()
    for t in threads:
        t.join()
    text = httpx.get(f"{loaded.url}/metrics", headers=loaded.auth).text
    after, elapsed = proc.cpu_times(), time.monotonic() - start
    actual = ((after.user + after.system) - (before.user + before.system)) / elapsed * 100
    reported = value(samples(text), "modelplane_replica_cpu_percent", model="iris")
    assert actual > 5  # the replica did work
    assert abs(reported - actual) / actual < 0.10, (reported, actual)


def test_sampled_payload_logging_is_opt_in(loaded) -> None:
    import json

    folder = loaded.home / "logs" / "iris-payloads"
    deploy = loaded.cli("deploy", "iris:1", "--name", "iris-payloads", "--payload-log-rate", "1")
    assert deploy.returncode == 0, deploy.stderr
    response = httpx.post(f"{loaded.url}/v2/models/iris-payloads/infer", json=GOOD,
                          headers={**loaded.auth, "X-Request-Id": "payload-1"})  # fmt: skip
    assert response.status_code == 200
    wait_for(lambda: any(f.stat().st_size for f in folder.glob("*.payloads.jsonl")), timeout=10)
    [path] = folder.glob("*.payloads.jsonl")
    record = json.loads(path.read_text().splitlines()[0])
    assert record["request_id"] == "payload-1"
    assert json.loads(record["request"]["body"]) == GOOD
    assert "outputs" in json.loads(record["response"]["body"])
    # off by default: the first deployment writes none
    assert not list((loaded.home / "logs" / "iris").glob("*.payloads.jsonl"))
