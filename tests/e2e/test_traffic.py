"""Traffic between versions as a user runs it: a canary's share, sticky splits, versions by
path, promote and rollback under load, and rollouts the platform judges on its own. One real
server, real replicas, the real CLI."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from tests.e2e.test_dashboard import offline_page

from modelplane.testing import scores_onnx, wait_for

pytestmark = pytest.mark.e2e


def request(rows: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.e2e.conftest import Server

    home = tmp_path_factory.mktemp("traffic") / "home"
    made = Server(home)
    made.start()
    models = home.parent / "models"
    models.mkdir()
    versions = {
        "base": scores_onnx(), "good": scores_onnx(scale=1 + 1e-6),
        "slow": scores_onnx(slow_layers=100), "flip": scores_onnx(flip_above=0.8),
    }  # fmt: skip
    for name, data in versions.items():
        (models / f"{name}.onnx").write_bytes(data)
    try:
        yield made
    finally:
        made.stop()


class Load:
    """``threads`` clients posting one random row at a time until stopped; every answer kept
    as (time, status, version)."""

    def __init__(self, server, name: str, threads: int, sticky: bool = False) -> None:
        self.url = f"{server.url}/v2/models/{name}/infer"
        self.auth = server.auth
        self.answers: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(headers=self.auth, timeout=30) as client:
            while not self._stop.is_set():
                response = client.post(self.url, json=request(rng.random((1, 4), np.float32)))
                version = response.json().get("model_version", "") if response.is_success else ""
                self.answers.append((time.monotonic(), response.status_code, version))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def failed(self) -> list[int]:
        return [status for _, status, _ in self.answers if status != 200]


def under_load(server, command: str) -> tuple[subprocess.CompletedProcess[str], Load, float]:
    """``modelplane COMMAND iris`` while 16 clients call iris; none of their requests failed.
    Returns the command's result, the load and when the command returned."""
    with Load(server, "iris", 16) as load:
        time.sleep(1.5)
        result = server.cli(command, "iris")
        switched = time.monotonic()
        time.sleep(1.5)
    assert result.returncode == 0, result.stderr
    assert load.failed() == [], Counter(load.failed())
    return result, load, switched


def test_canary_share_sticky_versions_promote_and_rollback(server) -> None:
    models = server.home.parent / "models"
    server.push(models / "base.onnx", "iris")
    server.push(models / "good.onnx", "iris")
    assert server.cli("deploy", "iris:1", "--replicas", "2").returncode == 0

    canary = server.cli("deploy", "iris:2", "--canary", "10")
    assert canary.returncode == 0, canary.stderr
    assert "traffic: iris:1 90%, iris:2 10%" in canary.stdout, canary.stdout

    # 2,000 requests: the canary answers 10% of them, +-2%
    rng = np.random.default_rng(0)
    url = f"{server.url}/v2/models/iris/infer"
    versions: Counter[str] = Counter()
    with httpx.Client(headers=server.auth, timeout=30) as client:
        for _ in range(2000):
            response = client.post(url, json=request(rng.random((1, 4), np.float32)))
            assert response.status_code == 200, response.text
            versions[response.json()["model_version"]] += 1
        share = versions["2"] / 2000
        print(f"\ncanary 10%: {versions['2']} of 2,000 requests answered by v2 ({share:.1%})")
        assert 0.08 <= share <= 0.12, versions

        # sticky: the same request id, the same version, every time
        sticky: dict[str, set[str]] = {}
        for i in range(400):
            rid = f"user-{i % 100}"
            response = client.post(
                url,
                json=request(rng.random((1, 4), np.float32)),
                headers={"X-Request-Id": rid, "Modelplane-Sticky": "1"},
            )
            sticky.setdefault(rid, set()).add(response.json()["model_version"])
        assert all(len(seen) == 1 for seen in sticky.values()), sticky
        on_canary = sum(1 for seen in sticky.values() if seen == {"2"})
        assert 2 <= on_canary <= 25, on_canary  # about 10 of 100 ids

        # each version by its path; one not deployed says which are
        for version in ("1", "2"):
            pinned = client.post(f"{server.url}/v2/models/iris/versions/{version}/infer",
                                 json=request(np.ones((3, 4), np.float32)))  # fmt: skip
            assert pinned.json()["model_version"] == version
        missing = client.post(f"{server.url}/v2/models/iris/versions/7/infer",
                              json=request(np.ones((1, 4), np.float32)))  # fmt: skip
        assert missing.status_code == 404
        assert "version 7 of model 'iris' is not deployed (deployed: 1, 2)" in missing.text
        metadata = client.get(f"{server.url}/v2/models/iris").json()
        assert metadata["versions"] == ["1", "2"]
        metrics = client.get(f"{server.url}/metrics").text
        for version in ("1", "2"):  # each version's traffic, errors and latency side by side
            ok = re.search(rf'modelplane_requests_total{{code="200",model="iris",'
                           rf'version="{version}"}} (\d+)', metrics)  # fmt: skip
            assert ok is not None, metrics
            assert int(ok.group(1)) >= versions[version]
            replica = (rf'modelplane_replica_request_seconds_count{{model="iris",replica="\w+",'
                       rf'version="{version}"}}')  # fmt: skip
            assert re.search(replica, metrics), f"no replica series of version {version}"
            assert (
                f'modelplane_request_duration_seconds_count{{model="iris",version="{version}"}}'
                in metrics
            )

    # the dashboard shows both versions side by side, with what was measured of each
    with offline_page(server.url) as (page, elsewhere):
        page.goto(server.url + "/")
        page.fill("#key", server.key)
        page.click("button[type=submit]")
        page.wait_for_selector("#deployments >> text=iris:2 10%")
        page.goto(server.url + "/#/deployments/iris")
        page.wait_for_selector("#versions")
        rows = page.inner_text("#versions")
        assert "iris:1\tcurrent\t90%" in rows
        assert "iris:2\tcanary\t10%" in rows
        assert " ms" in rows  # each version's p99
        assert elsewhere == []

    # promote under 16-way load: nothing fails, and once it returns only v2 answers
    promoted, load, switched = under_load(server, "promote")
    assert "promoted: iris serves iris:2 (traffic: iris:2 100%)" in promoted.stdout
    after = {v for t, _, v in load.answers if t > switched + 0.2}
    before = Counter(v for t, _, v in load.answers if t < switched)
    print(
        f"promote under 16-way load: {len(load.answers)} requests, 0 failed; before "
        f"{dict(before)}, after only {after}"
    )
    assert after == {"2"}
    assert set(before) == {"1", "2"}

    # a canary of v1 beside v2, rolled back under load: nothing fails, only v2 after
    assert server.cli("deploy", "iris:1", "--canary", "50").returncode == 0
    _, load, switched = under_load(server, "rollback")
    assert {v for t, _, v in load.answers if t > switched + 0.2} == {"2"}
    assert {v for t, _, v in load.answers if t < switched} == {"1", "2"}
    status = server.cli("deployments", "status", "iris")
    assert "last: iris:1 rolled back (rolled back by admin)" in status.stdout, status.stdout

    # a rollback with no canary returns to the version before the last promotion
    back = server.cli("rollback", "iris")
    assert back.returncode == 0, back.stderr
    assert "rolled back: iris serves iris:1" in back.stdout
    again = server.cli("promote", "iris")
    assert again.returncode != 0
    assert "has no canary or shadow to promote" in again.stderr

    # a shadow: v1 answers every request, v2 gets a copy, answered, compared and discarded
    shadow = server.cli("deploy", "iris:2", "--shadow")
    assert shadow.returncode == 0, shadow.stderr
    assert "traffic: iris:1 100%, iris:2 shadow" in shadow.stdout
    with httpx.Client(headers=server.auth, timeout=30) as client:
        answered = Counter(
            client.post(url, json=request(rng.random((2, 4), np.float32))).json()["model_version"]
            for _ in range(200)
        )
        assert answered == {"1": 200}

        def compared() -> bool:
            beside = server.deployment("iris")["traffic"][1]
            return bool(beside["compared_rows"] >= 400 and beside["requests"] >= 200)

        wait_for(compared, timeout=10)  # the copies run off the requests' path
        beside = server.deployment("iris")["traffic"][1]
        assert (beside["role"], beside["errors"], beside["disagreeing_rows"]) == ("shadow", 0, 0)
        assert beside["p99_ms"] > 0
        metrics = client.get(f"{server.url}/metrics").text
        assert re.search(r'modelplane_compared_rows_total\{model="iris"\} 4\d\d', metrics)
        assert "modelplane_shed_copies_total 0.0" in metrics  # 200 copies, none shed
    assert server.cli("rollback", "iris").returncode == 0


def test_rollouts_roll_back_worse_versions_and_promote_a_good_one(server) -> None:
    models = server.home.parent / "models"
    for name in ("base", "slow", "flip", "good"):
        server.push(models / f"{name}.onnx", "lin")
    policy = "steps=10,50,100 interval=3s max-p99-ratio=2 max-disagreement=2% min-requests=20"
    deployed = server.cli("deploy", "lin:1", "--rollout", policy)
    assert deployed.returncode == 0, deployed.stderr

    def outcome(version: str) -> dict[str, str]:
        def ended() -> bool:
            last = server.deployment("lin")["last_rollout"]
            return bool(last) and last["version"] == version

        wait_for(ended, timeout=90, interval=0.2)
        last: dict[str, str] = server.deployment("lin")["last_rollout"]
        return last

    with Load(server, "lin", 4) as load:
        started = time.monotonic()
        assert server.cli("deploy", "lin:2").returncode == 0  # 17 ms slower, same answers
        slow = outcome("lin:2")
        slow_s = time.monotonic() - started
        started = time.monotonic()
        assert server.cli("deploy", "lin:3").returncode == 0  # 20% of labels differ
        flip = outcome("lin:3")
        flip_s = time.monotonic() - started
        started = time.monotonic()
        assert server.cli("deploy", "lin:4").returncode == 0  # as good as v1
        good = outcome("lin:4")
        good_s = time.monotonic() - started
    print(f"\nslow version: {slow['result']} after {slow_s:.1f} s: {slow['reason']}")
    print(f"disagreeing version: {flip['result']} after {flip_s:.1f} s: {flip['reason']}")
    print(f"good version: {good['result']} after {good_s:.1f} s: {good['reason']}")
    print(f"{len(load.answers)} requests during the three rollouts, {len(load.failed())} failed")
    assert slow["result"] == "rolled back"
    assert "p99 latency" in slow["reason"]
    assert flip["result"] == "rolled back"
    assert "disagree" in flip["reason"]
    assert good["result"] == "promoted"
    assert server.deployment("lin")["version"] == 4
    assert load.failed() == []
    status = server.cli("deployments", "status", "lin")
    assert "last: lin:4 promoted (rollout of lin:4 complete: every step held" in status.stdout
    assert "rollout policy: steps=10,50,100 interval=3s" in status.stdout
    events = json.loads(server.cli("deployments", "status", "lin", "--json").stdout)["events"]
    rollbacks = [e["reason"] for e in events if e["action"] == "rollback"]
    assert any("lin:2" in r and "p99" in r for r in rollbacks), rollbacks
    audit = server.cli("audit", "--action", "deployment.rollback", "--json")
    assert audit.returncode == 0, audit.stderr
    assert "lin:3" in audit.stdout
    assert "disagree" in audit.stdout


def test_inputs_shifted_by_two_standard_deviations_raise_the_drift_alert(server) -> None:
    """The shipped alert rule's threshold, on /metrics: unshifted inputs stay under it,
    inputs shifted by two standard deviations go above it within the window."""
    rule = yaml.safe_load((Path(__file__).parents[2] / "docs/monitoring/alerts.yml").read_text())
    [drift] = [r for g in rule["groups"] for r in g["rules"] if r["alert"] == "ModelplaneDataDrift"]
    threshold = float(drift["expr"].rsplit(">", 1)[1])
    server.push(server.home.parent / "models" / "base.onnx", "drift")
    assert server.cli("deploy", "drift").returncode == 0
    rng = np.random.default_rng(5)
    url = f"{server.url}/v2/models/drift/infer"

    def send(shift: float, rows: int) -> None:
        with httpx.Client(headers=server.auth, timeout=30) as client:
            for _ in range(rows // 50):
                batch = rng.standard_normal((50, 4)).astype(np.float32) + shift
                assert client.post(url, json=request(batch)).status_code == 200
                time.sleep(0.025)  # the replica samples one request in 20 ms

    def psi() -> dict[str, float]:
        text = httpx.get(f"{server.url}/metrics", headers=server.auth, timeout=30).text
        found = re.findall(r'modelplane_drift_psi\{feature="(x\[\d\])",model="drift",'
                           r'replica="\w+",version="1"\} ([\d.e+-]+)', text)  # fmt: skip
        return {feature: float(value) for feature, value in found}

    send(0.0, 2000)  # the reference (the first 1,000 rows), then a window like it
    same = psi()
    assert sorted(same) == ["x[0]", "x[1]", "x[2]", "x[3]"], same
    assert max(same.values()) < threshold, same
    send(2.0, 1000)  # a window of rows shifted by two standard deviations
    shifted = psi()
    print(f"\ndrift PSI, same inputs: {same}; shifted by 2 sigma: {shifted}")
    assert min(shifted.values()) > threshold, shifted
