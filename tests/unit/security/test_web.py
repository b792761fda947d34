"""The web-surface guard: Host allow-list, CSRF Origin check, security headers, CORS."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

from modelplane.security.middleware import authenticates_by_cookie
from modelplane.security.web import (
    CSP,
    SECURITY_HEADERS,
    WebGuard,
    default_hosts,
    host_allowed,
    host_rule,
    refusal,
    same_origin,
    web_policy,
)

RULE = host_rule(default_hosts("127.0.0.1", 8000))
KEY_COOKIE = (b"cookie", b"theme=dark; modelplane_key=mpk_a_b")


def scope(
    method: str = "GET",
    path: str = "/api/v1/models",
    *headers: tuple[bytes, bytes],
    host: bytes | None = b"127.0.0.1:8000",
    scheme: str = "http",
) -> dict[str, Any]:
    listed = [(b"host", host)] if host is not None else []
    return {"type": "http", "method": method, "path": path, "scheme": scheme,
            "headers": [*listed, *headers]}  # fmt: skip


def test_the_default_hosts_are_the_bind_address_and_loopback_with_the_port() -> None:
    assert default_hosts("0.0.0.0", 8000) == ["0.0.0.0:8000", "localhost:8000", "127.0.0.1:8000"]
    assert default_hosts("::1", 9) == ["[::1]:9", "localhost:9", "127.0.0.1:9"]
    assert default_hosts("127.0.0.1", 0) == ["127.0.0.1", "localhost", "127.0.0.1"]  # any port


@pytest.mark.parametrize(
    ("host", "ok"),
    [(b"127.0.0.1:8000", True), (b"localhost:8000", True), (b"LocalHost:8000", True),
     (b"localhost:8001", False), (b"localhost", False), (b"evil.example:8000", False),
     (b"127.0.0.1.evil.example:8000", False), (b"", False), (None, False)],
)  # fmt: skip
def test_host_allow_list(host: bytes | None, ok: bool) -> None:
    assert host_allowed(host, RULE) is ok


def test_a_name_without_a_port_is_allowed_on_any_port_and_star_allows_all() -> None:
    rule = host_rule(["models.example.com", "[::1]:8000", "b\u00fccher.example"])
    assert host_allowed(b"models.example.com", rule)
    assert host_allowed(b"models.example.com:443", rule)
    assert host_allowed(b"[::1]:8000", rule)
    assert not host_allowed(b"[::1]:8001", rule)
    assert host_allowed(b"xn--bcher-kva.example", rule)  # as a browser sends it
    assert not host_allowed(b"other.example.com", rule)
    assert host_allowed(b"anything", host_rule(["*"]))


def test_same_origin() -> None:
    host = b"127.0.0.1:8000"
    assert same_origin(b"http://127.0.0.1:8000", None, "http", host)
    assert same_origin(b"https://127.0.0.1:8000", None, "http", host)  # TLS ended by a proxy
    assert not same_origin(b"http://127.0.0.1:8000", None, "https", host)  # downgrade
    for evil in [b"http://127.0.0.1:9999", b"http://127.0.0.2:8000", b"null", b"",
                 b"http://127.0.0.1:8000.evil.example"]:  # fmt: skip
        assert not same_origin(evil, None, "http", host)
    assert same_origin(None, b"http://127.0.0.1:8000/#/nodes", "http", host)
    assert not same_origin(None, b"http://127.0.0.1:8000.evil.example/", "http", host)
    assert not same_origin(None, None, "http", host)
    # an Origin, when present, decides: a good Referer does not rescue a foreign Origin
    assert not same_origin(b"http://evil.example", b"http://127.0.0.1:8000/", "http", host)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_a_cookie_authenticated_change_needs_the_servers_own_origin(method: str) -> None:
    own = (b"origin", b"http://127.0.0.1:8000")
    assert refusal(scope(method, "/api/v1/keys", KEY_COOKIE, own), RULE)[0] is None
    for headers in [(KEY_COOKIE,), (KEY_COOKIE, (b"origin", b"http://127.0.0.1:9999"))]:
        refused, _ = refusal(scope(method, "/api/v1/keys", *headers), RULE)
        assert refused is not None
        assert refused[:2] == (403, "permission_denied")


def test_reads_and_bearer_requests_are_not_checked_for_origin() -> None:
    evil = (b"origin", b"http://evil.example")
    assert refusal(scope("GET", "/api/v1/models", KEY_COOKIE, evil), RULE)[0] is None
    bearer = (b"authorization", b"Bearer mpk_a_b")
    assert refusal(scope("POST", "/v2/models/m/infer", bearer, KEY_COOKIE, evil), RULE)[0] is None
    assert refusal(scope("POST", "/api/v1/deployments"), RULE)[0] is None  # no key: a 401 later


def test_sign_in_and_out_need_the_servers_own_origin_even_without_a_cookie() -> None:
    for path in ["/login", "/logout"]:
        assert refusal(scope("POST", path), RULE)[0] is not None
        assert refusal(scope("POST", path, (b"origin", b"null")), RULE)[0] is not None
        own = (b"origin", b"http://127.0.0.1:8000")
        assert refusal(scope("POST", path, own), RULE)[0] is None


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer mpk_a_b", b"bearer mpk_a_b", b"Bearer ", b"Bearer \xa0", b"Basic x", b"Bearer\tx",
     b"Bearer  \t "],
)  # fmt: skip
def test_the_origin_check_covers_exactly_what_authenticates_by_the_cookie(
    authorization: bytes,
) -> None:
    """The CSRF check must not skip a request that the auth middleware then authenticates by
    its cookie (a blank or odd bearer header falls back to the cookie there)."""
    request = scope("POST", "/api/v1/keys", (b"authorization", authorization), KEY_COOKIE)
    checked = refusal(request, RULE)[0] is not None
    assert checked is authenticates_by_cookie(request)


def test_a_foreign_host_is_refused_but_health_checks_answer_any_host() -> None:
    refused, _ = refusal(scope("GET", "/", host=b"evil.example:8000"), RULE)
    assert refused is not None
    assert refused[:2] == (400, "invalid_argument")
    assert refusal(scope("GET", "/", host=None), RULE)[0] is not None
    assert refusal(scope("GET", "/v2/health/ready", host=b"10.0.0.7:8000"), RULE)[0] is None


class Recorder:
    def __init__(self) -> None:
        self.called = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called += 1
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})


def run(guard: WebGuard, request: dict[str, Any]) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(guard(request, receive, send))
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


def test_every_response_carries_the_security_headers_and_refusals_are_json() -> None:
    app = Recorder()
    guard = WebGuard(app, web_policy("127.0.0.1", 8000, [], []))
    status, headers, _ = run(guard, scope())
    assert status == 200
    assert headers[b"content-security-policy"] == CSP.encode()
    assert b"frame-ancestors 'none'" in headers[b"content-security-policy"]
    assert b"'unsafe-inline'" not in headers[b"content-security-policy"]
    assert headers[b"x-frame-options"] == b"DENY"
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert b"access-control-allow-origin" not in headers
    status, headers, body = run(guard, scope(host=b"evil.example:8000"))
    assert status == 400
    assert set(orjson.loads(body)) == {"error", "code"}
    assert b"evil" not in body  # the refused name is not echoed
    assert headers[b"x-frame-options"] == b"DENY"
    status, _, body = run(guard, scope("DELETE", "/api/v1/keys/k", KEY_COOKIE))
    assert status == 403
    assert orjson.loads(body)["code"] == "permission_denied"
    assert app.called == 1


def test_no_cors_unless_configured_and_then_only_for_those_origins() -> None:
    app = Recorder()
    guard = WebGuard(app, web_policy("127.0.0.1", 8000, [], ["https://app.example.com"]))
    preflight = scope("OPTIONS", "/v2/models/m/infer", (b"origin", b"https://app.example.com"),
                      (b"access-control-request-method", b"POST"))  # fmt: skip
    status, headers, _ = run(guard, preflight)
    assert status == 204
    assert headers[b"access-control-allow-origin"] == b"https://app.example.com"
    assert b"authorization" in headers[b"access-control-allow-headers"]
    assert b"access-control-allow-credentials" not in headers
    status, headers, _ = run(guard, scope("GET", "/v2", (b"origin", b"https://app.example.com")))
    assert headers[b"access-control-allow-origin"] == b"https://app.example.com"
    assert headers[b"vary"] == b"origin"
    status, headers, _ = run(guard, scope("GET", "/v2", (b"origin", b"https://evil.example")))
    assert b"access-control-allow-origin" not in headers
    assert app.called == 2  # the preflight never reached the app


def test_the_header_lists_are_built_once() -> None:
    """Hot path: the middleware adds a precomputed tuple; it never builds header lists."""
    assert isinstance(SECURITY_HEADERS, tuple)
    assert all(isinstance(v, bytes) for _, v in SECURITY_HEADERS)
