import pytest

from modelplane.domain import Principal, Role
from modelplane.errors import PermissionDenied
from modelplane.security.policy import Action, authorize


def test_admin_may_do_everything() -> None:
    for action in Action:
        authorize(Principal("k", Role.ADMIN, "admin"), action)


def test_user_may_read_and_infer_only() -> None:
    user = Principal("k", Role.USER, "app")
    authorize(user, Action.INFER)
    with pytest.raises(PermissionDenied, match="may not deploy"):
        authorize(user, Action.DEPLOY)


def test_only_admins_may_trust_pickles() -> None:
    authorize(Principal("k", Role.ADMIN, "admin"), Action.TRUST_PICKLE)
    with pytest.raises(PermissionDenied):
        authorize(Principal("k", Role.OPERATOR, "ci"), Action.TRUST_PICKLE)
