"""Acceptance 3: an invoker key limited to 50 requests a second, offered 200 a second for a
few seconds, gets 50 a second (within 10%) and 429 with Retry-After for the rest, while another
key at the same time is unaffected. Keys made and changed with the real CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from modelplane.testing import IRIS_REQUEST

pytestmark = pytest.mark.e2e

SECONDS = 4.0


async def paced(
    client: httpx.AsyncClient, key: str, per_s: float, seconds: float, seen: Counter[object]
) -> None:
    """``per_s`` requests a second for ``seconds``, each sent at its time (a bounded pool of
    senders; a late one goes at once), counting status codes and Retry-After values."""
    total = int(per_s * seconds)
    start = time.monotonic()
    slots = iter(range(total))
    headers = {"Authorization": f"Bearer {key}"}

    async def sender() -> None:
        for i in slots:
            delay = start + i / per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            response = await client.post("/v2/models/iris/infer", json=IRIS_REQUEST,
                                         headers=headers)  # fmt: skip
            seen[response.status_code] += 1
            if response.status_code == 429:
                seen["retry-after", response.headers.get("retry-after")] += 1
                seen["code", response.json()["code"]] += 1

    await asyncio.gather(*(sender() for _ in range(16)))
    seen["elapsed"] = round(time.monotonic() - start, 3)  # type: ignore[assignment]  # a float


def test_a_key_limited_to_50_per_second_under_200_per_second(
    server_factory, iris_file: Path
) -> None:
    server = server_factory()
    server.start()
    server.push(iris_file, "iris")
    assert server.cli("deploy", "iris").returncode == 0
    made = server.cli("keys", "create", "--name", "app", "--role", "invoker", "--rate-limit",
                      "50", "--burst", "5", "--max-concurrent", "64", "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    limited = json.loads(made.stdout)
    assert (limited["rate_limit"], limited["burst"]) == (50.0, 5)
    other = json.loads(server.cli("keys", "create", "--name", "other", "--role", "invoker",
                                  "--json").stdout)  # fmt: skip
    listed = server.cli("keys", "list")
    assert "50/s burst 5, 64 at once" in listed.stdout

    async def load() -> tuple[Counter[object], Counter[object]]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            # warm: the replica is up and answering before the measured load
            auth = {"Authorization": f"Bearer {other['secret']}"}
            warm = await client.post("/v2/models/iris/infer", json=IRIS_REQUEST, headers=auth)
            assert warm.status_code == 200, warm.text
            seen_limited: Counter[object] = Counter()
            seen_other: Counter[object] = Counter()
            await asyncio.gather(
                paced(client, limited["secret"], 200, SECONDS, seen_limited),
                paced(client, other["secret"], 20, SECONDS, seen_other),
            )
            return seen_limited, seen_other

    seen_limited, seen_other = asyncio.run(load())
    accepted = seen_limited[200] / SECONDS
    refused = seen_limited[429]
    assert seen_limited[200] + refused == int(200 * SECONDS), seen_limited
    assert abs(accepted - 50) <= 5, seen_limited  # within 10% of 50
    assert seen_limited["retry-after", "1"] == refused, seen_limited
    assert seen_limited["code", "resource_exhausted"] == refused
    assert seen_other[200] == int(20 * SECONDS), seen_other  # the other key: unaffected

    metrics = httpx.get(f"{server.url}/metrics", headers=server.auth).text
    series = f'modelplane_key_requests_limited_total{{key_id="{limited["id"]}",limit="rate"}}'
    assert f"{series} {float(refused)}" in metrics
    assert limited["secret"] not in metrics

    # raised with `keys update`: the key is free again
    raised = server.cli("keys", "update", limited["id"], "--rate-limit", "0")
    assert raised.returncode == 0, raised.stderr
    assert "limits: 64 at once" in raised.stdout


def test_the_dashboard_shows_each_keys_limits_and_refusals(server_factory) -> None:
    from playwright.sync_api import sync_playwright

    server = server_factory()
    server.start()
    made = server.cli("keys", "create", "--name", "ci", "--role", "viewer", "--rate-limit",
                      "0.1", "--burst", "1", "--json")  # fmt: skip
    key = json.loads(made.stdout)
    codes = [
        httpx.get(f"{server.url}/api/v1/models",
                  headers={"Authorization": f"Bearer {key['secret']}"}).status_code
        for _ in range(3)
    ]  # fmt: skip
    assert codes == [200, 429, 429]
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium package is needed: apt-get install chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context()
            context.add_cookies([{"name": "modelplane_key", "value": server.key,
                                  "url": server.url}])  # fmt: skip
            page = context.new_page()
            page.goto(server.url + "/#/keys")
            row = page.wait_for_selector(f'#keys tr[data-key="{key["id"]}"]', timeout=20_000)
            assert row is not None
            text = row.inner_text()
            assert "0.1/s burst 1" in text
            assert "2 (2 / 0 / 0)" in text
        finally:
            browser.close()
