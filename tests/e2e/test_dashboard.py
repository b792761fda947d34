"""The dashboard in real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from modelplane.testing import IRIS_REQUEST

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
GOOD = IRIS_REQUEST


def traffic(server, seconds: float, stop: threading.Event) -> None:
    end = time.monotonic() + seconds
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as client:
        while time.monotonic() < end and not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):  # the charts are what is checked
                client.post("/v2/models/iris/infer", json=GOOD)
            time.sleep(0.01)


def test_sign_in_watch_traffic_and_read_logs(server_factory) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium package is needed: apt-get install chromium"
    server = server_factory()
    server.start("--demo", timeout=300)  # trains and converts the demo model first
    from modelplane.testing import wait_for

    wait_for(lambda: server.deployment("iris")["state"] == "ready", timeout=90)
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    stop = threading.Event()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        assert page.url.endswith("/login")
        page.fill("#key", server.key)
        page.click("button[type=submit]")
        page.wait_for_selector("#deployments >> text=iris")
        assert "iris:1" in page.inner_text("#deployments")
        assert "ready" in page.inner_text("#deployments")

        loader = threading.Thread(target=traffic, args=(server, 120.0, stop))
        loader.start()
        try:
            # the requests/s card and chart move once two samples 2 s apart have seen traffic
            page.wait_for_function(
                "() => parseFloat(document.getElementById('card-rps').textContent) > 0",
                timeout=20_000,
            )
            page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)
            page.click("#deployments >> text=iris")
            page.wait_for_selector("#replicas")
            assert "start" in page.inner_text("#events")
            page.wait_for_function(
                "() => document.getElementById('logs').textContent.includes('infer')",
                timeout=20_000,
            )
            page.screenshot(path=str(ARTIFACTS / "dashboard-deployment.png"), full_page=True)
            page.goto(server.url + "/#/models/iris")
            page.wait_for_selector("text=float_input")
            page.goto(server.url + "/#/nodes")
            page.wait_for_selector("#nodes >> text=local")
        finally:
            stop.set()
            loader.join()
        browser.close()
    assert errors == []
