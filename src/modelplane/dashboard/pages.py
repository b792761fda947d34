"""Serves the dashboard page and the browser sign-in that keeps the key in a cookie."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from modelplane.domain import Principal
from modelplane.errors import Unauthenticated
from modelplane.security.middleware import INVALID_KEY_REASON, Authenticator, cookie_name
from modelplane.security.policy import Action, authorize
from modelplane.telemetry.audit import AuditTrail

STATIC = files("modelplane.dashboard") / "static"
# files, never inline: the pages run under a Content-Security-Policy without inline script/style
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css", "login.css": "text/css"}
# fixed texts only: nothing the caller sends is ever written into the page
INVALID_KEY = "That key is not valid or was revoked. Check it and paste it again."
ERROR_SLOT = "<!-- error -->"


def _login_page(error: str | None = None, status: int = 200) -> HTMLResponse:
    html = STATIC.joinpath("login.html").read_text()
    if error is not None:
        html = html.replace(ERROR_SLOT, f'<p id="error" class="error" role="alert">{error}</p>')
    headers = {"WWW-Authenticate": 'Bearer realm="modelplane"'} if status == 401 else None
    return HTMLResponse(html, status_code=status, headers=headers)


def create_router(
    authenticator: Authenticator, audit: AuditTrail | None = None, *, tls: bool = False
) -> APIRouter:
    """``tls``: the server speaks TLS itself (the cookie is then ``Secure`` whatever the
    request's scheme says; a request over https gets a ``Secure`` cookie either way)."""
    router = APIRouter(include_in_schema=False)

    def secure(request: Request) -> bool:
        return tls or request.url.scheme == "https"

    def record(request: Request, action: str, who: Principal | None, result: str) -> None:
        if audit is not None:
            client = request.client.host if request.client else "unknown"
            audit.record(action, key_id=who.key_id if who else None,
                         key_name=who.name if who else None, source=client, target="dashboard",
                         result=result)  # fmt: skip

    @router.get("/")
    def index(request: Request) -> HTMLResponse:
        who = request.scope.get("state", {}).get("principal")
        if not isinstance(who, Principal):
            raise Unauthenticated("missing API key")
        authorize(who, Action.DASHBOARD)
        return HTMLResponse(STATIC.joinpath("index.html").read_text())

    @router.get("/static/{name}")
    def asset(name: str) -> Response:
        if name not in ASSETS:
            return Response(status_code=404)
        return Response(STATIC.joinpath(name).read_bytes(), media_type=ASSETS[name])

    @router.get("/login")
    def login_page(reason: str | None = None) -> HTMLResponse:
        # the auth middleware sends a browser here with ?reason=invalid when its cookie's key fails
        return _login_page(INVALID_KEY if reason == INVALID_KEY_REASON else None)

    @router.post("/login")
    def login(request: Request, key: str = Form(...)) -> Response:
        key = key.strip()
        who = authenticator.authenticate(key) if key else None
        record(request, "sign_in", who, "303" if who else "401")
        if who is None:
            return _login_page(INVALID_KEY, status=401)
        response = RedirectResponse("/", status_code=303)
        https = secure(request)
        response.set_cookie(cookie_name(https), key, httponly=True, samesite="strict", secure=https)
        return response

    @router.post("/logout")
    def logout(request: Request) -> Response:
        https = secure(request)
        cookie = request.cookies.get(cookie_name(True)) or request.cookies.get(cookie_name(False))
        record(request, "sign_out", authenticator.authenticate(cookie) if cookie else None, "303")
        # the cookie is HttpOnly, so only the server can remove it
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(cookie_name(https), httponly=True, samesite="strict", secure=https)
        return response

    return router
