"""The HTTP application factory: management API, gateway routes, dashboard, one error mapping."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from modelplane import __version__
from modelplane.api.docs import add_docs
from modelplane.api.routers import (
    admin,
    audit,
    cluster,
    conversions,
    deployments,
    keys,
    logs,
    metrics,
    models,
)
from modelplane.api.schemas import error_doc
from modelplane.api.services import Services
from modelplane.dashboard.pages import create_router as dashboard_router
from modelplane.errors import ModelplaneError, error_for_status
from modelplane.registry.db import DATABASE_DOWN, database_unavailable
from modelplane.security.auditing import AuditMiddleware, Reached
from modelplane.security.detection_asgi import DetectionMiddleware, KeyBlockGate
from modelplane.security.limiter import Quotas
from modelplane.security.middleware import AuthMiddleware
from modelplane.security.web import WebGuard, web_policy
from modelplane.serving.gateway import Gateway
from modelplane.serving.http import V2Surface
from modelplane.serving.openai import OpenAISurface
from modelplane.serving.openai_errors import OpenAIErrors

log = logging.getLogger("modelplane.api")
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def create_app(services: Services, gateway: Gateway, lifespan: Lifespan | None = None) -> ASGIApp:
    app = FastAPI(
        title="modelplane",
        version=__version__,
        description="Management API (/api/v1) and KServe V2 inference API (/v2).",
        lifespan=lifespan,
        docs_url=None,  # served by api/docs.py, from local assets
        redoc_url=None,
    )

    @app.exception_handler(ModelplaneError)
    async def on_error(_: Request, exc: ModelplaneError) -> JSONResponse:
        return JSONResponse(error_doc(exc.message, exc.code), status_code=exc.status)

    async def on_database_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("the database cannot be reached: %s", str(exc).splitlines()[0])
        unavailable = database_unavailable()
        return JSONResponse(error_doc(unavailable.message, unavailable.code), status_code=503)

    for kind in DATABASE_DOWN:
        app.add_exception_handler(kind, on_database_down)

    @app.exception_handler(Exception)
    async def on_bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            error_doc("internal error; the server log has the details", "internal"),
            status_code=500,
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # the framework's own answers (no such route, wrong method) in the one error shape
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs and docs/api.md"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}" + (
                f"; use {allowed}" if allowed else ""
            )
        else:
            message = str(exc.detail)
        code = HTTP_CODES.get(exc.status_code) or error_for_status(exc.status_code, "").code
        return JSONResponse(error_doc(message, code), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_doc(_describe(exc), "invalid_argument"), status_code=400)

    app.include_router(models.create_router(services))
    app.include_router(deployments.create_router(services))
    app.include_router(deployments.create_nodes_router(services))
    app.include_router(conversions.create_router(services))
    app.include_router(metrics.create_router(services))
    app.include_router(logs.create_router(services))
    app.include_router(keys.create_router(services))
    app.include_router(admin.create_router(services))
    app.include_router(audit.create_router(services))
    if services.leadership is not None:
        app.include_router(cluster.create_router(services))
    tls = services.settings.server.tls_cert is not None
    app.include_router(dashboard_router(services.keys, services.audit, tls=tls))
    add_docs(app)
    max_body = services.settings.serving.max_request_bytes
    # Reached: what answers from here on passed every gate (the audit trail tells them apart)
    # keys' limits, after authentication (security/limiter.py); the OpenAI surface counts tokens
    quotas = services.quotas if services.quotas is not None else Quotas()
    v2 = V2Surface(app, gateway, __version__, max_body, services.metrics)
    surface = Reached(OpenAISurface(v2, gateway, max_body, quotas))
    detector = services.detector
    if detector is None:
        guarded: ASGIApp = AuditMiddleware(AuthMiddleware(surface, services.keys, quotas=quotas),
                               services.audit)  # fmt: skip
    else:
        # a blocked address is refused before authentication, a blocked key right after it
        authed = AuthMiddleware(KeyBlockGate(surface, detector), services.keys, quotas=quotas)
        guarded = AuditMiddleware(DetectionMiddleware(authed, detector), services.audit)
    # outermost: Host, CSRF and CORS checks, and the security headers on every response
    server = services.settings.server
    policy = web_policy(server.host, server.port, server.allowed_hosts, server.cors_origins)
    # refusals on /v1 (key, quota, block) in OpenAI's error shape, for OpenAI clients
    return WebGuard(OpenAIErrors(guarded), policy, services.audit)
