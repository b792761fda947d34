"""Serves the dashboard page and the browser login that stores the key in a cookie."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, RedirectResponse, Response

COOKIE = "modelplane_key"
STATIC = files("modelplane.dashboard") / "static"
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def create_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def index() -> HTMLResponse:
        return HTMLResponse(STATIC.joinpath("index.html").read_text())

    @router.get("/static/{name}")
    def asset(name: str) -> Response:
        if name not in ASSETS:
            return Response(status_code=404)
        return Response(STATIC.joinpath(name).read_bytes(), media_type=ASSETS[name])

    @router.get("/login")
    def login_page() -> HTMLResponse:
        return HTMLResponse(STATIC.joinpath("login.html").read_text())

    @router.post("/login")
    def login(key: str = Form(...)) -> Response:
        # The key is only stored; the auth middleware checks it on the next request.
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, key.strip(), httponly=True, samesite="strict")
        return response

    return router
