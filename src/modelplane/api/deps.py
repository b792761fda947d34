"""Route dependencies: the caller's principal, authorization and model scope."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from modelplane.domain import Principal
from modelplane.errors import Unauthenticated
from modelplane.registry.deployments import DeploymentRecord, missing_deployment
from modelplane.registry.service import missing_model
from modelplane.security.policy import Action, authorize, in_scope, sees_deployment


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


def see_model(who: Principal, name: str) -> None:
    """A model outside the key's scope answers exactly as one that does not exist."""
    if not in_scope(who, name):
        raise missing_model(name)


def see_deployment(who: Principal, record: DeploymentRecord) -> DeploymentRecord:
    name = record.deployment.name
    if not sees_deployment(who, name, record.version.model):
        raise missing_deployment(name)
    return record
