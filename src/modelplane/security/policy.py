"""Who may do what: a pure function of role and action (scoping per model comes later)."""

from __future__ import annotations

import enum

from modelplane.domain import Principal, Role
from modelplane.errors import PermissionDenied


class Action(enum.StrEnum):
    READ = "read"
    INFER = "infer"
    PUSH = "push"
    DEPLOY = "deploy"
    DELETE = "delete"
    MANAGE_KEYS = "manage_keys"
    TRUST_PICKLE = "trust_pickle"
    METRICS = "metrics"


ALLOWED: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.OPERATOR: frozenset(
        {Action.READ, Action.INFER, Action.PUSH, Action.DEPLOY, Action.DELETE, Action.METRICS}
    ),
    Role.USER: frozenset({Action.READ, Action.INFER}),
}


def authorize(principal: Principal, action: Action) -> None:
    if action not in ALLOWED[principal.role]:
        raise PermissionDenied(
            f"role {principal.role.value!r} may not {action.value}; ask an admin for a key with "
            "a role that can"
        )
