"""Who may do what: pure functions of a principal (its role and model scope) and an action.

Roles are fixed sets of actions. A key's model scope (names or globs) limits every action on a
model: a model outside it is answered exactly as a model that does not exist, so the callers of
``in_scope`` raise the same ``NotFound`` a missing model gets.
"""

from __future__ import annotations

import enum
from fnmatch import fnmatchcase

from modelplane.domain import Principal, Role
from modelplane.domain.auth import ALL_MODELS
from modelplane.errors import PermissionDenied


class Action(enum.StrEnum):
    READ = "read"  # models, versions, deployments, conversions, nodes (management reads)
    DASHBOARD = "dashboard"  # the dashboard page
    INFER = "infer"  # V2 REST and gRPC: infer, model metadata, ready, statistics
    PUSH = "push"  # push, samples, optimize
    ALIAS = "alias"
    DELETE = "delete"  # versions and models not in use
    DEPLOY = "deploy"  # deploy, scale, undeploy
    NODES = "nodes"  # cordon, drain, uncordon; the servers of the cluster
    LOGS = "logs"
    METRICS = "metrics"  # /metrics
    MANAGE_KEYS = "manage_keys"
    AUDIT = "audit"  # the audit trail (admin only)
    TRUST_PICKLE = "trust_pickle"


_MANAGE = frozenset({Action.READ, Action.DASHBOARD})
ALLOWED: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.OPERATOR: _MANAGE | {Action.DEPLOY, Action.NODES, Action.LOGS, Action.METRICS},
    Role.PUBLISHER: _MANAGE | {Action.PUSH, Action.ALIAS, Action.DELETE},
    Role.INVOKER: frozenset({Action.INFER}),
    Role.VIEWER: _MANAGE | {Action.METRICS},  # the dashboard reads /metrics
}


# actions about the whole server, not a model: only a key without a model scope may take them
# (a scoped admin could otherwise give itself, or a new key, every model)
UNSCOPED_ONLY = frozenset({Action.MANAGE_KEYS})


def allowed(principal: Principal, action: Action) -> bool:
    if action in UNSCOPED_ONLY and principal.models != ALL_MODELS:
        return False
    return action in ALLOWED[principal.role]


def authorize(principal: Principal, action: Action) -> None:
    if action not in ALLOWED[principal.role]:
        raise PermissionDenied(
            f"role {principal.role.value!r} may not {action.value}; ask an admin for a key with "
            "a role that can"
        )
    if action in UNSCOPED_ONLY and principal.models != ALL_MODELS:
        raise PermissionDenied(
            f"a key scoped to some models may not {action.value}; use an admin key without a "
            "model scope"
        )


def in_scope(principal: Principal, name: str) -> bool:
    """Whether the key's model scope covers ``name`` (a model, or a deployment's name)."""
    models = principal.models
    return models == ALL_MODELS or any(fnmatchcase(name, glob) for glob in models)


def sees_deployment(principal: Principal, name: str, model: str) -> bool:
    """A deployment is visible when both its own name (the V2 name clients call) and the model
    it serves are in scope."""
    return in_scope(principal, name) and in_scope(principal, model)
