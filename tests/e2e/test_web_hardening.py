"""The web surface against a browser attacker, in real headless Chromium (Debian's).

A page on another origin (a second HTTP server on this machine, started and stopped by the
test) tries to act with the signed-in victim's cookie, to frame the dashboard and to read the
API; a DNS-rebinding name (Chromium resolves ``rebind.test`` to 127.0.0.1) reaches the server
under a foreign Host. The server's own pages must run under its Content-Security-Policy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from modelplane.testing import free_port, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext

pytestmark = pytest.mark.e2e

REBIND = "rebind.test"  # a name an attacker controls, resolved to the victim's address
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--host-resolver-rules=MAP {REBIND} 127.0.0.1"]  # fmt: skip
COOKIE = "modelplane_key"
# what a violation of the page's CSP looks like to the page itself
WATCH_CSP = """window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));"""
PAGES = ["/", "/login", "/docs", "/docs/init.js", "/static/dashboard.js", "/static/login.css",
         "/api/v1/models", "/metrics", "/v2", "/openapi.json", "/no/such/route"]  # fmt: skip


def evil_page(victim: str) -> str:
    return f"""<!doctype html><html><head><title>evil</title></head><body>
<iframe id="victim" src="{victim}/" width="900" height="400"></iframe>
<form id="create-key" method="post" action="{victim}/api/v1/keys">
  <input name="name" value="pwned"><input name="role" value="admin"></form>
<form id="sign-out" method="post" action="{victim}/logout"></form>
</body></html>"""


@contextlib.contextmanager
def evil_server(victim: str, folder: Path) -> Iterator[str]:
    """A plain static HTTP server on another origin (another port of this machine, so the
    browser even sends the victim's SameSite=Strict cookie: ports do not separate sites)."""
    folder.mkdir()
    (folder / "evil.html").write_text(evil_page(victim))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(url + "/evil.html", timeout=1).status_code == 200
            return False

        wait_for(up, timeout=30)
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium package is needed: apt-get install chromium"
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def signed_in(browser: Browser, server) -> BrowserContext:
    """A browser context whose user signed in to the dashboard with the admin key."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(server.url + "/login")
    page.fill("#key", server.key)
    page.click("button[type=submit]")
    page.wait_for_selector("#sign-out button")
    page.close()
    assert COOKIE in {c["name"] for c in context.cookies()}
    return context


def keys_now(server) -> list[tuple[str, str, str, str]]:
    response = httpx.get(server.url + "/api/v1/keys", headers=server.auth, timeout=30)
    response.raise_for_status()
    return sorted((k["id"], k["name"], k["role"], k["state"]) for k in response.json())


def test_every_page_carries_the_headers_and_runs_under_the_csp(shared_server, browser) -> None:
    for path in PAGES:
        response = httpx.get(shared_server.url + path, headers=shared_server.auth, timeout=30)
        csp = response.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp, path
        assert "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp, path
        assert "unsafe-eval" not in csp, path
        assert response.headers.get("x-frame-options") == "DENY", path
        assert response.headers.get("x-content-type-options") == "nosniff", path
        assert response.headers.get("referrer-policy") == "same-origin", path
    # refusals too, and the public health check
    for headers in [{}, {"Authorization": "Bearer mpk_x_y"}]:
        response = httpx.get(shared_server.url + "/api/v1/models", headers=headers, timeout=30)
        assert response.status_code == 401
        assert response.headers["x-frame-options"] == "DENY"
    health = httpx.get(shared_server.url + "/v2/health/ready", timeout=30)
    assert health.headers["x-content-type-options"] == "nosniff"

    # the dashboard, the sign-in page and the API docs work under that policy: no violation
    context = signed_in(browser, shared_server)
    try:
        context.add_init_script(WATCH_CSP)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(shared_server.url + "/")
        page.wait_for_selector("#deployments", timeout=20_000)
        page.wait_for_selector(".chart", timeout=20_000)
        assert page.evaluate("window.__csp") == []
        page.goto(shared_server.url + "/docs")
        page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
        assert page.evaluate("window.__csp") == []
        page.goto(shared_server.url + "/login")
        assert page.evaluate("getComputedStyle(document.body).maxWidth") == "512px"  # login.css
        assert page.evaluate("window.__csp") == []
        assert errors == []
    finally:
        context.close()


def test_another_origin_cannot_act_with_the_cookie_frame_or_read(
    shared_server, browser, tmp_path: Path
) -> None:
    victim = shared_server.url
    spare = httpx.post(victim + "/api/v1/keys", json={"name": "spare", "role": "viewer"},
                       headers=shared_server.auth, timeout=30)  # fmt: skip
    assert spare.status_code == 201
    spare_id = spare.json()["id"]
    before = keys_now(shared_server)
    context = signed_in(browser, shared_server)
    try:
        with evil_server(victim, tmp_path / "evil") as evil:
            page = context.new_page()
            with page.expect_response(victim + "/") as framed:
                page.goto(evil + "/evil.html")  # waits for the frame's load too

            # the victim cannot be framed: the header says so and the frame stays empty
            assert framed.value.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in framed.value.headers["content-security-policy"]
            child = next(f for f in page.frames if f != page.main_frame)
            assert not child.url.startswith(victim), child.url  # the browser's error page
            assert page.frame_locator("#victim").locator("#sign-out").count() == 0

            # a simple cross-origin POST (no preflight) goes out with the cookie: refused
            with page.expect_response(victim + "/api/v1/keys") as posted:
                page.evaluate(
                    """(url) => fetch(url, {method: "POST", mode: "no-cors",
                        credentials: "include", headers: {"Content-Type": "text/plain"},
                        body: JSON.stringify({name: "pwned", role: "admin"})}).catch(() => 0)""",
                    victim + "/api/v1/keys",
                )
            assert posted.value.status == 403

            # a DELETE needs a preflight, which gets no CORS answer: it is never sent
            outcome = page.evaluate(
                """(url) => fetch(url, {method: "DELETE", credentials: "include"})
                    .then(() => "sent", () => "blocked")""",
                f"{victim}/api/v1/keys/{spare_id}",
            )
            assert outcome == "blocked"

            # reading the API with a stolen-looking bearer key: no CORS, the page cannot read it
            read = page.evaluate(
                """([url, key]) => fetch(url, {headers: {Authorization: "Bearer " + key}})
                    .then((r) => r.text(), () => "blocked")""",
                [victim + "/api/v1/models", shared_server.key],
            )
            assert read == "blocked"

            # forms posted from the evil page: refused with the JSON error
            for form, path in [("#create-key", "/api/v1/keys"), ("#sign-out", "/logout")]:
                page.goto(evil + "/evil.html")
                with page.expect_response(victim + path) as submitted:
                    page.evaluate(f"document.querySelector('{form}').submit()")
                assert submitted.value.status == 403, path
                assert submitted.value.json()["code"] == "permission_denied"
                assert set(submitted.value.json()) == {"error", "code"}

        # even if a DELETE did get through with the cookie, the server refuses it
        forged = context.request.delete(
            f"{victim}/api/v1/keys/{spare_id}", headers={"Origin": evil}
        )
        assert forged.status == 403
        # nothing changed, and the victim is still signed in
        assert keys_now(shared_server) == before
        assert context.request.get(victim + "/api/v1/models").status == 200
        # the same request from the server's own origin works (the check is not a blanket ban)
        own = context.request.delete(f"{victim}/api/v1/keys/{spare_id}", headers={"Origin": victim})
        assert own.status == 200
        assert own.json()["state"] == "revoked"
    finally:
        context.close()

    # no CORS for a foreign origin, preflight or not
    for method in ["OPTIONS", "GET"]:
        response = httpx.request(
            method, victim + "/v2", timeout=30,
            headers={**shared_server.auth, "Origin": "http://127.0.0.1:1",
                     "Access-Control-Request-Method": "POST"},
        )  # fmt: skip
        assert not any(h.startswith("access-control-") for h in response.headers), method


def test_a_foreign_host_is_refused(shared_server, browser) -> None:
    """DNS rebinding: the attacker's name now points at the victim; the browser sends it as
    the Host, and the server refuses to answer to it."""
    port = shared_server.port
    context = browser.new_context()
    try:
        page = context.new_page()
        response = page.goto(f"http://{REBIND}:{port}/login")
        assert response is not None
        assert response.status == 400
        assert response.json()["code"] == "invalid_argument"
        assert REBIND not in response.text()  # the refused name is not echoed
        assert page.locator("#key").count() == 0
    finally:
        context.close()
    for host in [f"{REBIND}:{port}", "evil.example", f"127.0.0.1:{port + 1}"]:
        refused = httpx.get(shared_server.url + "/api/v1/models", timeout=30,
                            headers={**shared_server.auth, "Host": host})  # fmt: skip
        assert refused.status_code == 400, host
        assert set(refused.json()) == {"error", "code"}
    for host in [f"localhost:{port}", f"127.0.0.1:{port}"]:
        ok = httpx.get(shared_server.url + "/api/v1/models", timeout=30,
                       headers={**shared_server.auth, "Host": host})  # fmt: skip
        assert ok.status_code == 200, host
    # the health checks answer whatever name a probe uses
    probe = httpx.get(shared_server.url + "/v2/health/live", headers={"Host": "10.1.2.3:80"})
    assert probe.status_code == 200
