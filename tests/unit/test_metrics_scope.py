"""/metrics for a scoped key: a series is kept when its deployment's name and the model it
serves are both in scope (the V2 routes' rule); ``key_id`` series only for unscoped admins."""

from __future__ import annotations

from modelplane.api.routers.metrics import _scoped
from modelplane.domain import Principal, Role

TEXT = b"\n".join([
    b"# TYPE modelplane_requests_total counter",
    b'modelplane_requests_total{model="fraud-a",version="1",code="200"} 3.0',
    b'modelplane_requests_total{model="fraud-b",version="1",code="200"} 4.0',  # serves "secret"
    b'modelplane_requests_total{model="other",version="1",code="200"} 5.0',
    b'modelplane_requests_total{model="fraud-gone",version="1",code="200"} 6.0',  # unknown now
    b'modelplane_key_requests_limited_total{key_id="abc123",limit="rate"} 2.0',
    b"modelplane_replicas 1.0",
])  # fmt: skip
SERVES = {"fraud-a": "fraud-a", "fraud-b": "secret", "other": "other"}


def _lines(who: Principal) -> set[bytes]:
    return set(_scoped(TEXT, who, SERVES).split(b"\n"))


def test_a_scoped_key_sees_only_deployments_whose_name_and_model_are_in_scope() -> None:
    for role in (Role.VIEWER, Role.ADMIN):
        seen = b"\n".join(_lines(Principal("k", role, "", ("fraud-*",))))
        assert b'model="fraud-a"' in seen
        for hidden in (b'model="fraud-b"', b'model="other"', b'model="fraud-gone"', b"key_id"):
            assert hidden not in seen, (role, hidden)
        assert b"modelplane_replicas 1.0" in seen


def test_key_series_only_for_an_unscoped_admin() -> None:
    assert b"key_id" in b"\n".join(_lines(Principal("k", Role.ADMIN, "")))
    viewer = b"\n".join(_lines(Principal("k", Role.VIEWER, "")))
    assert b"key_id" not in viewer
    assert b'model="fraud-b"' in viewer  # unscoped: every model
    assert b'model="other"' in viewer
