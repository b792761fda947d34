"""ASGI middleware that authenticates every request except the public health checks.

A caller sends ``Authorization: Bearer <key>``; a browser may instead hold the key in the
``modelplane_key`` cookie set by ``/login`` (and removed by ``/logout``); over https the cookie
is ``Secure`` and named ``__Host-modelplane_key``, and either name is accepted. The authenticated
``Principal`` is put in ``scope["state"]["principal"]`` for routes to authorize against. A browser
loading a page without a working cookie is sent to the sign-in page, never shown JSON.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Protocol

import orjson
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from modelplane.domain import Principal
from modelplane.errors import ModelplaneError
from modelplane.security.limiter import Quotas, serve_limited

PUBLIC_PATHS = frozenset(
    {"/v2/health/live", "/v2/health/ready", "/login", "/logout", "/favicon.ico",
     "/static/login.css"}
)  # fmt: skip
COOKIE = "modelplane_key"
SECURE_COOKIE = "__Host-" + COOKIE  # over https: Secure, Path=/, no Domain (browsers enforce it)
INVALID_KEY_REASON = "invalid"  # /login?reason=invalid: the sign-in page says the key failed


class Authenticator(Protocol):
    def authenticate(self, token: str) -> Principal | None: ...


def _token(scope: Scope) -> tuple[str | None, bool]:
    """The key the request carries, and whether it came from the cookie."""
    cookie_header = None
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip(), False
        elif name == b"cookie":
            cookie_header = value.decode("latin-1")
    if cookie_header:
        cookies = SimpleCookie(cookie_header)
        for cookie in (SECURE_COOKIE, COOKIE):
            morsel = cookies.get(cookie)
            if morsel is not None and morsel.value:
                return str(morsel.value), True
    return None, False


def cookie_name(secure: bool) -> str:
    """The sign-in cookie's name: with the ``__Host-`` prefix when it is ``Secure``."""
    return SECURE_COOKIE if secure else COOKIE


def authenticates_by_cookie(scope: Scope) -> bool:
    """Whether the request's key is the sign-in cookie's (it carries no usable bearer key): the
    CSRF check (security/web.py) applies exactly to these."""
    return _token(scope)[1]


class AuthMiddleware:
    def __init__(
        self, app: ASGIApp, authenticator: Authenticator, *, quotas: Quotas | None = None
    ) -> None:
        self._app = app
        self._auth = authenticator
        self._quotas = quotas if quotas is not None else Quotas()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self._app(scope, receive, send)
            return
        token, from_cookie = _token(scope)
        try:
            principal = self._auth.authenticate(token) if token else None
        except ModelplaneError as exc:  # the key store cannot answer (its database is away)
            body = orjson.dumps({"error": exc.message, "code": exc.code})
            await send({"type": "http.response.start", "status": exc.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        if principal is None:
            await self._deny(scope, receive, send, token is not None, from_cookie)
            return
        scope.setdefault("state", {})["principal"] = principal
        if principal.limits is None:  # a key without quotas pays nothing more
            await self._app(scope, receive, send)
        else:
            await serve_limited(self._quotas, principal, self._app, scope, receive, send)

    @staticmethod
    async def _deny(
        scope: Scope, receive: Receive, send: Send, had_token: bool, from_cookie: bool
    ) -> None:
        if (not had_token or from_cookie) and scope["method"] == "GET" and _wants_html(scope):
            # a page load: to the sign-in page, dropping a cookie whose key no longer works
            if from_cookie:
                redirect = RedirectResponse(f"/login?reason={INVALID_KEY_REASON}", 303)
                secure = scope.get("scheme") == "https"
                redirect.delete_cookie(
                    cookie_name(secure), httponly=True, samesite="strict", secure=secure
                )
            else:
                redirect = RedirectResponse("/login", 303)
            await redirect(scope, receive, send)
            return
        message = "invalid or revoked API key" if had_token else MISSING_KEY
        body = orjson.dumps({"error": message, "code": "unauthenticated"})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="modelplane"'),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


MISSING_KEY = (
    "missing API key: send 'Authorization: Bearer <key>'. The CLI and SDK send "
    "$MODELPLANE_API_KEY, else the key in $MODELPLANE_HOME/admin.key (~/.modelplane/admin.key, "
    "written by `modelplane serve` on its first start)"
)


def _wants_html(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"accept":
            return b"text/html" in value
    return False
