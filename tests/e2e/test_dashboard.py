"""The dashboard in real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from modelplane.testing import IRIS_REQUEST

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
GOOD = IRIS_REQUEST
COOKIE = "modelplane_key"


@contextlib.contextmanager
def offline_page(url: str) -> Iterator[tuple[Page, list[str]]]:
    """A Chromium page that may reach only the server at ``url``: anything else is aborted and
    listed, so a page that needs the internet fails here whatever network this machine has."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium package is needed: apt-get install chromium"
    elsewhere: list[str] = []

    def only_here(route: Route) -> None:
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", only_here)
            yield context.new_page(), elsewhere
        finally:
            browser.close()


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


def test_a_wrong_key_is_refused_on_the_sign_in_form(shared_server) -> None:
    with offline_page(shared_server.url) as (page, elsewhere):
        page.goto(shared_server.url + "/")
        page.fill("#key", "mpk_not_a_real_key")
        page.click("button[type=submit]")
        page.wait_for_selector("#error", timeout=10_000)
        assert "That key is not valid or was revoked" in page.inner_text("#error")
        assert page.url.endswith("/login")
        assert page.is_visible("#key")  # still on the form, ready for another try
        assert '{"error"' not in page.inner_text("body")
        assert COOKIE not in {c["name"] for c in page.context.cookies()}
        # a cookie whose key stops working sends the next page load back here, with the message
        page.context.add_cookies([{"name": COOKIE, "value": "mpk_revoked_x", "url": page.url}])
        page.goto(shared_server.url + "/")
        page.wait_for_selector("#error", timeout=10_000)
        assert page.url.endswith("/login?reason=invalid")
        assert COOKIE not in {c["name"] for c in page.context.cookies()}
        assert elsewhere == []


def test_sign_out_clears_the_cookie(shared_server) -> None:
    with offline_page(shared_server.url) as (page, elsewhere):
        page.goto(shared_server.url + "/")
        page.fill("#key", shared_server.key)
        page.click("button[type=submit]")
        page.wait_for_selector("#sign-out button")
        assert page.context.request.get(shared_server.url + "/api/v1/models").status == 200
        cookie = next(c for c in page.context.cookies() if c["name"] == COOKIE)
        assert cookie["httpOnly"]
        page.click("#sign-out button")
        page.wait_for_url("**/login")
        page.wait_for_selector("#key")
        assert COOKIE not in {c["name"] for c in page.context.cookies()}
        assert page.context.request.get(shared_server.url + "/api/v1/models").status == 401
        page.goto(shared_server.url + "/")
        assert page.url.endswith("/login")
        assert elsewhere == []


def test_api_docs_render_without_the_internet(shared_server) -> None:
    with offline_page(shared_server.url) as (page, elsewhere):
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        here = shared_server.url
        page.context.add_cookies([{"name": COOKIE, "value": shared_server.key, "url": here}])
        page.goto(here + "/docs")
        page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
        assert page.locator(".swagger-ui .opblock").count() > 10
        assert "/api/v1/models" in page.inner_text(".swagger-ui")
        assert elsewhere == []
        assert errors == []


def test_keys_are_created_and_revoked_from_the_keys_page(shared_server) -> None:
    server = shared_server
    with offline_page(server.url) as (page, elsewhere):
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.context.add_cookies([{"name": COOKIE, "value": server.key, "url": server.url}])
        page.goto(server.url + "/#/keys")
        page.wait_for_selector("#key-create", timeout=20_000)
        page.fill("#key-create [name=name]", "from-page")
        page.select_option("#key-create [name=role]", "viewer")
        page.fill("#key-create [name=models]", "iris, fraud-*")
        page.fill("#key-create [name=expires]", "30d")
        page.fill("#key-create [name=rate_limit]", "10")
        page.click("#key-create button[type=submit]")
        page.wait_for_selector("#key-secret:not([hidden])", timeout=10_000)
        secret = page.inner_text("#key-secret-value").strip()
        key_id = page.inner_text("#key-secret-id").strip()
        assert secret.startswith(f"mpk_{key_id}_")
        page.wait_for_selector(f'#keys tr[data-key="{key_id}"]', timeout=10_000)
        row = page.inner_text(f'#keys tr[data-key="{key_id}"]')
        for shown in ("viewer", "fraud-*, iris", "10/s"):
            assert shown in row, row
        page.wait_for_timeout(2500)  # a refresh of the page keeps the secret on screen
        assert page.inner_text("#key-secret-value").strip() == secret
        stored = page.evaluate(
            "() => JSON.stringify([localStorage, sessionStorage, document.cookie])"
        )
        assert secret not in stored
        assert all(secret not in c["value"] for c in page.context.cookies())

        auth = {"Authorization": f"Bearer {secret}"}
        assert httpx.get(f"{server.url}/api/v1/models", headers=auth).status_code == 200

        page.click(f'#keys tr[data-key="{key_id}"] button[data-revoke]')
        page.click(f'#keys tr[data-key="{key_id}"] >> text=Confirm revoke')
        clicked = time.monotonic()
        page.wait_for_selector(f'#keys tr[data-key="{key_id}"] >> td.revoked', timeout=10_000)
        while (status := httpx.get(f"{server.url}/api/v1/models", headers=auth).status_code) != 401:
            assert time.monotonic() - clicked < 5, f"still {status} after 5 s"
            time.sleep(0.1)
        # leaving the page forgets the secret
        page.goto(server.url + "/#/nodes")
        page.wait_for_selector("#nodes")
        page.goto(server.url + "/#/keys")
        page.wait_for_selector(f'#keys tr[data-key="{key_id}"]')
        assert page.is_hidden("#key-secret")
        assert secret not in page.content()
        assert elsewhere == []
        assert errors == []
