"""Route dependencies: the caller's principal and authorization."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from modelplane.domain import Principal
from modelplane.errors import Unauthenticated
from modelplane.security.policy import Action, authorize


def principal(request: Request) -> Principal:
    found = request.scope.get("state", {}).get("principal")
    if not isinstance(found, Principal):
        raise Unauthenticated("missing API key")
    return found


def allow(action: Action) -> Callable[[Request], Principal]:
    def check(request: Request) -> Principal:
        who = principal(request)
        authorize(who, action)
        return who

    return check
