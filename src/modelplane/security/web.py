"""Hardening of the HTTP surface: one ASGI middleware in front of every route.

- **Host allow-list** (DNS rebinding): a request whose ``Host`` is not a name this server answers
  to gets 400. The health checks are exempt (probes use the pod's address; they reveal nothing).
- **Origin check** (CSRF): a mutating request that authenticates by the dashboard's cookie, and
  the sign-in and sign-out forms, must carry an ``Origin`` (or ``Referer``) that is this server's
  own origin, else 403. Requests with a bearer key are not affected: a browser never adds one.
- **Security headers** on every response: a strict Content-Security-Policy (no inline script or
  style, no framing), ``X-Frame-Options: DENY``, ``nosniff`` and ``Referrer-Policy``.
- **CORS** only for configured origins, answered with that origin, never with credentials.

Each refusal is recorded in the audit trail (action ``denied``, the reason in the detail), queued
in memory like every denial: never a database write on the request path.

The decisions are pure functions; the middleware reads the headers once and adds precomputed
header lists (it runs on the inference hot path).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelplane.security.auditing import claimed_key, source
from modelplane.security.middleware import COOKIE, authenticates_by_cookie
from modelplane.telemetry.audit import DENIED, AuditTrail

Headers = tuple[tuple[bytes, bytes], ...]
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HEALTH = frozenset({"/v2/health/live", "/v2/health/ready"})
SIGN_IN = frozenset({"/login", "/logout"})  # login CSRF: no cookie yet, still checked
COOKIE_NAME = COOKIE.encode()
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# "same-origin", not "no-referrer": under no-referrer a browser sends `Origin: null` with the
# page's own form posts, which the CSRF check must refuse. Other origins get no referrer either way.
SECURITY_HEADERS: Headers = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)
CORS_METHODS = b"GET, POST, PUT, PATCH, DELETE"
CORS_HEADERS = b"authorization, content-type, inference-header-content-length"
BAD_HOST = (
    400,
    "invalid_argument",
    "this server does not answer to the name in the request's Host header; if clients reach it "
    "by that name, start it with --allowed-hosts NAME (MODELPLANE_SERVER__ALLOWED_HOSTS)",
)
CROSS_ORIGIN = (
    403,
    "permission_denied",
    "cross-origin request refused: a change made with the dashboard's sign-in cookie must come "
    "from this server's own pages; other clients send 'Authorization: Bearer <key>'",
)
Refusal = tuple[int, str, str]


def default_hosts(bind: str, port: int) -> list[str]:
    """The names a server bound to ``bind:port`` answers to unless told more."""
    names = [f"[{bind}]" if ":" in bind else bind, "localhost", "127.0.0.1"]
    return names if port == 0 else [f"{n}:{port}" for n in names]


@dataclass(frozen=True, slots=True)
class HostRule:
    """``exact``: allowed ``name:port`` values; ``names``: names allowed on any port."""

    exact: frozenset[bytes]
    names: frozenset[bytes]
    anything: bool = False


def host_rule(entries: Iterable[str]) -> HostRule:
    exact: set[bytes] = set()
    names: set[bytes] = set()
    for entry in entries:
        entry = entry.strip().lower()
        value = entry.encode() if entry.isascii() else entry.encode("idna")  # as browsers send
        if value == b"*":
            return HostRule(frozenset(), frozenset(), anything=True)
        (exact if _port_of(value) else names).add(value)
    return HostRule(frozenset(exact), frozenset(names))


def _port_of(host: bytes) -> bytes:
    if host.startswith(b"["):
        return host.partition(b"]")[2].removeprefix(b":")
    return host.rpartition(b":")[2] if b":" in host else b""


def host_allowed(host: bytes | None, rule: HostRule) -> bool:
    if rule.anything:
        return True
    if not host:
        return False
    if host in rule.exact:
        return True
    host = host.lower()
    if host in rule.exact:
        return True
    port = _port_of(host)
    return (host[: -len(port) - 1] if port else host) in rule.names


def same_origin(origin: bytes | None, referer: bytes | None, scheme: str, host: bytes) -> bool:
    """Whether the request's ``Origin`` (or, without one, its ``Referer``) is this server,
    reached as ``scheme://host``. Behind a proxy that ends TLS the server sees http while the
    browser is on https, so an https origin is accepted for an http request too."""
    host = host.lower()
    own = (b"https://" + host,) if scheme == "https" else (b"http://" + host, b"https://" + host)
    if origin is not None:
        return origin.lower() in own
    if referer is not None:
        return any(referer.lower().startswith(o + b"/") for o in own)
    return False


def refusal(scope: Scope, rule: HostRule) -> tuple[Refusal | None, bytes | None]:
    """Why the request is refused (or None), and its ``Origin``."""
    host = origin = referer = None
    cookie = False
    for name, value in scope["headers"]:
        if name == b"host":
            host = value
        elif name == b"origin":
            origin = value
        elif name == b"referer":
            referer = value
        elif name == b"cookie":
            cookie = cookie or COOKIE_NAME in value
    path = scope["path"]
    if path not in HEALTH and not host_allowed(host, rule):
        return BAD_HOST, origin
    checked = scope["method"] in MUTATING and (
        path in SIGN_IN or (cookie and authenticates_by_cookie(scope))
    )
    if checked and (host is None or not same_origin(origin, referer, scope["scheme"], host)):
        return CROSS_ORIGIN, origin
    return None, origin


def cors_headers(origins: Iterable[str]) -> dict[bytes, Headers]:
    """Per allowed origin, every header an answer to it carries: the security headers and its
    CORS headers ("*": any origin, answered as ``*``). Never ``Allow-Credentials``."""
    out: dict[bytes, Headers] = {}
    for origin in origins:
        value = origin.strip().rstrip("/").lower().encode()
        cors = ((b"access-control-allow-origin", value), (b"vary", b"origin"))
        out[value] = SECURITY_HEADERS + cors
    return out


@dataclass(frozen=True, slots=True)
class WebPolicy:
    hosts: HostRule
    cors: Mapping[bytes, Headers] = field(default_factory=dict)


def web_policy(
    bind: str, port: int, allowed_hosts: Iterable[str], cors_origins: Iterable[str]
) -> WebPolicy:
    return WebPolicy(
        host_rule([*default_hosts(bind, port), *allowed_hosts]), cors_headers(cors_origins)
    )


def refusal_detail(scope: Scope, refused: Refusal) -> str:
    """Why a request was refused, for the audit trail: the Host or Origin it sent."""
    headers: dict[bytes, bytes] = dict(scope["headers"])
    if refused is BAD_HOST:
        return "host not allowed: " + headers.get(b"host", b"(none)").decode("latin-1")[:200]
    sent = headers.get(b"origin") or headers.get(b"referer") or b"(none)"
    return "cross-origin: " + sent.decode("latin-1")[:200]


class WebGuard:
    """The middleware: refuses by :func:`refusal` (recording each refusal in ``audit``),
    answers CORS preflights for configured origins, and adds the security headers to every
    response."""

    def __init__(self, app: ASGIApp, policy: WebPolicy, audit: AuditTrail | None = None) -> None:
        self._app = app
        self._policy = policy
        self._audit = audit
        self._any_origin = policy.cors.get(b"*")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        refused, origin = refusal(scope, self._policy.hosts)
        extra = SECURITY_HEADERS
        if origin is not None and self._policy.cors:
            cors = self._policy.cors.get(origin.lower(), self._any_origin)
            if cors is not None:
                if refused is None and _is_preflight(scope):
                    await _preflight(send, cors)
                    return
                extra = cors
        if refused is not None:
            if self._audit is not None:
                self._record(scope, refused)
            await _refuse(send, refused, extra)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self._app(scope, receive, send_with_headers)

    def _record(self, scope: Scope, refused: Refusal) -> None:
        assert self._audit is not None
        self._audit.record(
            DENIED,
            key_id=claimed_key(scope),
            key_name=None,
            source=source(scope),
            target=f"{scope['method']} {scope['path']}",
            result=str(refused[0]),
            detail=refusal_detail(scope, refused),
        )


def _is_preflight(scope: Scope) -> bool:
    if scope["method"] != "OPTIONS":
        return False
    return any(name == b"access-control-request-method" for name, _ in scope["headers"])


async def _preflight(send: Send, cors: Headers) -> None:
    headers = [*cors, (b"access-control-allow-methods", CORS_METHODS),
               (b"access-control-allow-headers", CORS_HEADERS),
               (b"access-control-max-age", b"600"), (b"content-length", b"0")]  # fmt: skip
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(send: Send, refused: Refusal, extra: Headers) -> None:
    status, code, message = refused
    body = orjson.dumps({"error": message, "code": code})
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *extra]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
