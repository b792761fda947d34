"""Routes with two versions: pinning one, and the JSON the other servers' gateways read."""

from __future__ import annotations

import json

from modelplane.domain import Signature, TensorSpec
from modelplane.serving.routing import Canary, Endpoint, Route, route_doc, route_from_doc

SIG = Signature((TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 3)),))
ROUTE = Route("iris", "iris", "1", SIG, 2, (Endpoint("a", "unix:/a"),),
              canary=Canary("2", SIG, (Endpoint("b", "unix:/b"),), percent=10.0))  # fmt: skip


def test_each_version_of_a_route_can_be_pinned() -> None:
    current, candidate = ROUTE.pinned("1"), ROUTE.pinned("2")
    assert current is not None
    assert candidate is not None
    assert (current.version, current.endpoints, current.canary) == ("1", ROUTE.endpoints, None)
    assert (candidate.version, [e.replica_id for e in candidate.endpoints]) == ("2", ["b"])
    assert current.fixed
    assert candidate.fixed  # retries stay on the version chosen
    assert ROUTE.pinned("3") is None
    assert ROUTE.versions() == ["1", "2"]
    plain = Route("iris", "iris", "1", SIG, 1)
    assert plain.pinned("1") is plain


def test_a_route_with_a_canary_travels_as_json() -> None:
    assert route_from_doc(json.loads(json.dumps(route_doc(ROUTE)))) == ROUTE
