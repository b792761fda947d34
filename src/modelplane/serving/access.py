"""Roles and model scopes on the inference surfaces (V2 REST and gRPC): a route outside the
caller's scope answers exactly as a name that was never deployed."""

from __future__ import annotations

from modelplane.domain import Principal
from modelplane.errors import NotFound
from modelplane.security.policy import in_scope, sees_deployment
from modelplane.serving.gateway import Gateway, never_deployed
from modelplane.serving.routing import Route


def visible_route(gateway: Gateway, who: Principal, name: str, version: str | None) -> Route:
    """The route ``name`` (at ``version``) if the caller may see it; else the not-found error
    a name never deployed gets (a retired name the caller may not see is told nothing either)."""
    if not in_scope(who, name):
        raise NotFound(never_deployed(name))
    route = gateway.table.get(name)
    if route is None:
        retired = gateway.table.retired.get(name)
        if retired is not None and not in_scope(who, retired.partition(":")[0]):
            raise NotFound(never_deployed(name))
    elif not in_scope(who, route.model):
        raise NotFound(never_deployed(name))
    return gateway.route(name, version)


def visible_routes(gateway: Gateway, who: Principal) -> list[Route]:
    return [r for r in gateway.table.routes.values() if sees_deployment(who, r.name, r.model)]
