"""The HTTP side of the audit trail: an ASGI middleware in front of every route that records
each management change (a non-GET request under ``/api/``) that reached its route, whatever its
outcome, and each refused request (401, 403, 429, or a 400 that no route answered: from
authentication, authorization, a quota, a block or the web checks) as a denial.

A request refused before its route (``Reached`` marks those that got there) is only a denial,
never the management action it tried: a blocked address or an exhausted key cannot fill the
trail with entries of a kind that is kept longer.

What an entry holds comes from the request line, the authenticated principal and the response
status, never from headers or bodies: no key, cookie or payload reaches the trail. A route that
knows more (the deployment name a ``POST /api/v1/deployments`` created, whether a cordon
drains) adds it with ``note``. The inference path pays one wrapped ``send`` and nothing else; a
denial is queued in memory (``AuditTrail.record``), never written to the database per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelplane.domain import Principal
from modelplane.telemetry.audit import DENIED, RECORDED, AuditTrail

DENIED_STATUSES = frozenset({401, 403})  # refusals whichever layer answered them
# refusals when no route answered them (a route's own 400 is a failed change)
REFUSED_STATUSES = frozenset({400, 401, 403, 429})
REACHED = "audit_reached"  # set in the scope's state once a request passed every gate
SELF_RECORDED = frozenset({"/login", "/logout"})  # the dashboard's sign-in records itself
NOTE = "audit"  # the key in the scope's state where ``note`` keeps what a route adds
_KEY_ID = re.compile(r"mpk_([0-9a-f]{1,32})_")

_NAME = r"([^/]+)"
# (method, path pattern, action); the target is the pattern's groups joined with ':'
ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(f"^/api/v1/{pattern}$"), action)
    for method, pattern, action in (
        ("POST", f"models/{_NAME}/versions", "push"),
        ("POST", "samples", "samples"),
        ("POST", f"models/{_NAME}/versions/{_NAME}/optimize", "optimize"),
        ("PUT", f"models/{_NAME}/aliases/{_NAME}", "alias"),
        ("DELETE", f"models/{_NAME}/aliases/{_NAME}", "unalias"),
        ("DELETE", f"models/{_NAME}/versions/{_NAME}", "delete"),
        ("DELETE", f"models/{_NAME}", "delete"),
        ("POST", "deployments", "deploy"),
        ("DELETE", f"deployments/{_NAME}", "undeploy"),
        ("POST", f"deployments/{_NAME}/promote", "promote"),
        ("POST", f"deployments/{_NAME}/rollback", "rollback"),
        ("POST", f"nodes/{_NAME}/cordon", "node.cordon"),
        ("DELETE", f"nodes/{_NAME}/cordon", "node.uncordon"),
        ("POST", "keys", "key.create"),
        ("PATCH", f"keys/{_NAME}", "key.update"),
        ("POST", f"keys/{_NAME}/rotate", "key.rotate"),
        ("DELETE", f"keys/{_NAME}", "key.revoke"),
        ("POST", "admin/rotate-master-key", "master_key.rotate"),
    )
)


@dataclass(frozen=True, slots=True)
class Classified:
    action: str
    target: str


def classify(method: str, path: str) -> Classified | None:
    """The audited action a request is (None for reads and everything outside ``/api/``)."""
    if method in ("GET", "HEAD", "OPTIONS") or not path.startswith("/api/"):
        return None
    for route_method, pattern, action in ROUTES:
        if route_method == method:
            found = pattern.match(path)
            if found:
                return Classified(action, ":".join(found.groups()))
    return Classified(f"{method.lower()} {path}"[:64], path)  # a route this table lacks


def note(
    request: Request,
    *,
    action: str | None = None,
    target: str | None = None,
    detail: str | None = None,
) -> None:
    """Let a route name what the request did more precisely than its path says (never a
    secret: the entry is shown to admins and kept forever)."""
    noted: dict[str, str] = request.scope.setdefault("state", {}).setdefault(NOTE, {})
    for field, value in (("action", action), ("target", target), ("detail", detail)):
        if value is not None:
            noted[field] = value


def source(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def claimed_key_id(text: str) -> str | None:
    """The id part of a key in ``text`` (public, like a user name; never the secret)."""
    found = _KEY_ID.search(text)
    return found.group(1) if found else None


def claimed_key(scope: Scope) -> str | None:
    """The key id a request's bearer header or cookie names (never the secret)."""
    for name, value in scope["headers"]:
        if name in (b"authorization", b"cookie"):
            found = claimed_key_id(value.decode("latin-1"))
            if found:
                return found
    return None


def _read_or_infer(path: str) -> str:
    return "infer" if path.startswith("/v2/") else "read"


class Reached:
    """Innermost wrapper: marks a request as having passed authentication, quotas and blocks,
    so the audit middleware can tell a route's answer from a gate's refusal."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[REACHED] = True
        await self._app(scope, receive, send)


class AuditMiddleware:
    def __init__(self, app: ASGIApp, trail: AuditTrail) -> None:
        self._app = app
        self._trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in SELF_RECORDED:
            await self._app(scope, receive, send)
            return
        status = 500  # what the client gets when the app fails before answering

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, capture)
        finally:
            state: dict[str, Any] = scope.get("state") or {}
            reached = bool(state.get(REACHED))
            refused = status in DENIED_STATUSES or (not reached and status in REFUSED_STATUSES)
            if refused:
                if not state.get(RECORDED):  # a quota's refusal is recorded by the quotas
                    self._record(scope, status, state, refused=True)
            elif reached and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
                self._record(scope, status, state, refused=False)

    def _record(self, scope: Scope, status: int, state: dict[str, Any], *, refused: bool) -> None:
        method, path = scope["method"], scope["path"]
        classified = classify(method, path)
        who = state.get("principal")
        key_id, key_name = (who.key_id, who.name) if isinstance(who, Principal) else (None, None)
        if key_id is None and status == 401:
            key_id = claimed_key(scope)
        if refused:
            attempted = classified.action if classified else _read_or_infer(path)
            action, target, detail = DENIED, f"{method} {path}", attempted
        elif classified is not None:
            noted: dict[str, str] = state.get(NOTE) or {}
            action = noted.get("action", classified.action)
            target, detail = noted.get("target", classified.target), noted.get("detail", "")
        else:
            return  # a non-GET outside /api/ that was not denied: inference, not management
        self._trail.record(
            action,
            key_id=key_id,
            key_name=key_name,
            source=source(scope),
            target=target,
            result=str(status),
            detail=detail,
        )
