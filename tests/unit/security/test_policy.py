import pytest

from modelplane.domain import Principal, Role
from modelplane.errors import PermissionDenied
from modelplane.security.policy import (
    ALLOWED,
    Action,
    allowed,
    authorize,
    in_scope,
    sees_deployment,
)

A = Action
# the documented table (docs/security.md): role -> the actions it may take
EXPECTED: dict[Role, set[Action]] = {
    Role.ADMIN: set(Action),
    Role.OPERATOR: {A.READ, A.DASHBOARD, A.DEPLOY, A.NODES, A.LOGS, A.METRICS},
    Role.PUBLISHER: {A.READ, A.DASHBOARD, A.PUSH, A.ALIAS, A.DELETE},
    Role.INVOKER: {A.INFER},
    Role.VIEWER: {A.READ, A.DASHBOARD, A.METRICS},
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("action", list(Action))
def test_every_role_and_action(role: Role, action: Action) -> None:
    who = Principal("k", role, "someone")
    if action in EXPECTED[role]:
        authorize(who, action)
        assert allowed(who, action)
    else:
        assert not allowed(who, action)
        with pytest.raises(PermissionDenied, match=f"role '{role.value}' may not {action.value}"):
            authorize(who, action)


def test_every_role_has_a_fixed_set() -> None:
    assert set(ALLOWED) == set(Role)


def test_only_admins_manage_keys_and_trust_pickles() -> None:
    for role in Role:
        for action in (A.MANAGE_KEYS, A.TRUST_PICKLE):
            assert allowed(Principal("k", role, ""), action) == (role is Role.ADMIN)


def test_scope_globs() -> None:
    anything = Principal("k", Role.INVOKER, "")
    fraud = Principal("k", Role.INVOKER, "", ("fraud-*", "iris"))
    assert in_scope(anything, "whatever")
    assert in_scope(fraud, "fraud-eu")
    assert in_scope(fraud, "iris")
    assert not in_scope(fraud, "iris2")
    assert not in_scope(fraud, "credit")
    assert not in_scope(fraud, "FRAUD-eu")  # names are case-sensitive
    # a deployment is visible when its own name and its model's are both in scope
    assert sees_deployment(fraud, "fraud-prod", "fraud-model")
    assert not sees_deployment(fraud, "fraud-prod", "credit")
    assert not sees_deployment(fraud, "prod", "fraud-model")


def test_only_an_unscoped_admin_manages_keys() -> None:
    scoped = Principal("k", Role.ADMIN, "", ("fraud-*",))
    assert not allowed(scoped, A.MANAGE_KEYS)
    with pytest.raises(PermissionDenied, match="without a model scope"):
        authorize(scoped, A.MANAGE_KEYS)
    assert allowed(scoped, A.DEPLOY)  # everything else stays, within the scope
    assert allowed(Principal("k", Role.ADMIN, ""), A.MANAGE_KEYS)
