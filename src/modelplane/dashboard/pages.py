"""Serves the dashboard page and the browser sign-in that keeps the key in a cookie."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from modelplane.domain import Principal
from modelplane.errors import Unauthenticated
from modelplane.security.middleware import COOKIE, INVALID_KEY_REASON, Authenticator
from modelplane.security.policy import Action, authorize

STATIC = files("modelplane.dashboard") / "static"
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
# fixed texts only: nothing the caller sends is ever written into the page
INVALID_KEY = "That key is not valid or was revoked. Check it and paste it again."
ERROR_SLOT = "<!-- error -->"


def _login_page(error: str | None = None, status: int = 200) -> HTMLResponse:
    html = STATIC.joinpath("login.html").read_text()
    if error is not None:
        html = html.replace(ERROR_SLOT, f'<p id="error" class="error" role="alert">{error}</p>')
    headers = {"WWW-Authenticate": 'Bearer realm="modelplane"'} if status == 401 else None
    return HTMLResponse(html, status_code=status, headers=headers)


def create_router(authenticator: Authenticator) -> APIRouter:
    router = APIRouter(include_in_schema=False)

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
    def login(key: str = Form(...)) -> Response:
        key = key.strip()
        if not key or authenticator.authenticate(key) is None:
            return _login_page(INVALID_KEY, status=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict")
        return response

    @router.post("/logout")
    def logout() -> Response:
        # the cookie is HttpOnly, so only the server can remove it
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return response

    return router
