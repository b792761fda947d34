"""Acceptance: every route of the route table (OpenAPI + V2 REST + V2 gRPC + the dashboard page
+ /metrics) x method x role x in-scope / out-of-scope model gives the expected answer, and an
out-of-scope model is answered byte for byte as a model that does not exist.

Two platforms: ``full`` holds the models ``fraud-a`` and ``other``; ``bare`` only ``fraud-a``.
Every key is scoped to ``fraud-*``; what ``full`` answers about ``other`` must equal what
``bare`` (where ``other`` does not exist) answers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from modelplane.domain import ModelRef, Role
from modelplane.protocol.grpc import grpc_predict_v2_pb2 as pb
from modelplane.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from modelplane.registry.keys import KeySpec
from modelplane.security.policy import ALLOWED, UNSCOPED_ONLY, Action
from modelplane.server import Platform, build
from modelplane.serving.grpc import create_grpc_server
from modelplane.serving.routing import Route
from modelplane.settings import DetectionSettings, Settings
from modelplane.testing import IRIS_REQUEST

IN, OUT = "fraud-a", "other"
ROLES: list[Role | None] = [None, *Role]  # None: no key at all
PUBLIC = object()  # no key needed
ANY_KEY = object()  # any valid key, whatever its role

# (method, path) -> (action, what the path names: "model", "deployment" or None)
MANAGEMENT: dict[tuple[str, str], tuple[Any, str | None]] = {
    ("POST", "/api/v1/models/{name}/versions"): (Action.PUSH, "push"),
    ("GET", "/api/v1/models"): (Action.READ, None),
    ("GET", "/api/v1/models/{name}"): (Action.READ, "model"),
    ("DELETE", "/api/v1/models/{name}"): (Action.DELETE, "model"),
    ("GET", "/api/v1/models/{name}/versions/{ref}"): (Action.READ, "model"),
    ("POST", "/api/v1/models/{name}/versions/{version}/optimize"): (Action.PUSH, "model"),
    ("PUT", "/api/v1/models/{name}/aliases/{alias}"): (Action.ALIAS, "model"),
    ("DELETE", "/api/v1/models/{name}/aliases/{alias}"): (Action.ALIAS, "model"),
    ("DELETE", "/api/v1/models/{name}/versions/{version}"): (Action.DELETE, "model"),
    ("GET", "/api/v1/deployments"): (Action.READ, None),
    ("POST", "/api/v1/deployments"): (Action.DEPLOY, "model"),  # the model is in the body
    ("GET", "/api/v1/deployments/{name}"): (Action.READ, "deployment"),
    ("DELETE", "/api/v1/deployments/{name}"): (Action.DEPLOY, "deployment"),
    ("POST", "/api/v1/deployments/{name}/promote"): (Action.DEPLOY, "deployment"),
    ("POST", "/api/v1/deployments/{name}/rollback"): (Action.DEPLOY, "deployment"),
    ("GET", "/api/v1/deployments/{name}/logs"): (Action.LOGS, "deployment"),
    ("GET", "/api/v1/nodes"): (Action.READ, None),
    ("GET", "/api/v1/cluster"): (Action.NODES, None),  # server addresses, the database host
    ("POST", "/api/v1/nodes/{node}/cordon"): (Action.NODES, None),
    ("DELETE", "/api/v1/nodes/{node}/cordon"): (Action.NODES, None),
    ("GET", "/api/v1/conversions"): (Action.READ, None),
    ("GET", "/api/v1/conversions/{conversion_id}"): (Action.READ, None),
    ("POST", "/api/v1/samples"): (Action.PUSH, None),
    ("GET", "/metrics"): (Action.METRICS, None),
    ("GET", "/api/v1/keys"): (Action.MANAGE_KEYS, None),
    ("POST", "/api/v1/keys"): (Action.MANAGE_KEYS, None),
    ("GET", "/api/v1/keys/{key_id}"): (Action.MANAGE_KEYS, None),
    ("PATCH", "/api/v1/keys/{key_id}"): (Action.MANAGE_KEYS, None),
    ("DELETE", "/api/v1/keys/{key_id}"): (Action.MANAGE_KEYS, None),
    ("POST", "/api/v1/keys/{key_id}/rotate"): (Action.MANAGE_KEYS, None),
    ("POST", "/api/v1/admin/rotate-master-key"): (Action.MANAGE_KEYS, None),
    ("GET", "/api/v1/admin/backup"): (Action.MANAGE_KEYS, None),
    ("GET", "/api/v1/audit"): (Action.AUDIT, None),
}
# routes outside the OpenAPI document
EXTRA: dict[tuple[str, str], tuple[Any, str | None]] = {
    ("GET", "/"): (Action.DASHBOARD, None),
    ("GET", "/v2/health/live"): (PUBLIC, None),
    ("GET", "/v2/health/ready"): (PUBLIC, None),
    ("GET", "/v2"): (ANY_KEY, None),
    ("GET", "/v2/models/stats"): (Action.INFER, None),
    ("GET", "/v2/models/{name}"): (Action.INFER, "deployment"),
    ("GET", "/v2/models/{name}/versions/1"): (Action.INFER, "deployment"),
    ("GET", "/v2/models/{name}/ready"): (Action.INFER, "deployment"),
    ("GET", "/v2/models/{name}/stats"): (Action.INFER, "deployment"),
    ("POST", "/v2/models/{name}/infer"): (Action.INFER, "deployment"),
    ("POST", "/v2/models/{name}/versions/1/infer"): (Action.INFER, "deployment"),
    ("GET", "/v1/models"): (Action.INFER, None),
    ("GET", "/v1/models/{name}"): (Action.INFER, "deployment"),
    # the OpenAI routes name the model in the body (see _body)
    ("POST", "/v1/chat/completions"): (Action.INFER, "deployment"),
    ("POST", "/v1/completions"): (Action.INFER, "deployment"),
    ("POST", "/v1/embeddings"): (Action.INFER, "deployment"),
}
# calls not made with a key that may make them (they would change the server for the rest)
NOT_CALLED_WHEN_ALLOWED = {("POST", "/api/v1/admin/rotate-master-key")}
LISTS = {"/api/v1/models", "/api/v1/deployments", "/api/v1/conversions", "/v2/models/stats",
         "/metrics", "/api/v1/audit", "/v1/models"}  # fmt: skip


@dataclass
class World:
    platform: Platform
    keys: dict[Role | None, str | None]
    admin: httpx.AsyncClient

    async def call(self, role: Role | None, method: str, path: str, name: str) -> httpx.Response:
        url = path.format(name=name, ref="1", version="1", alias="prod", node="node-x",
                          conversion_id="c0", key_id="nokey")  # fmt: skip
        key = self.keys[role]
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        kwargs: dict[str, Any] = {"headers": headers}
        if method in ("POST", "PUT", "PATCH"):
            kwargs["json"] = _body(method, path, name)
        if path.endswith("/versions") and method == "POST":
            kwargs = {"headers": headers, "content": b"not a model"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.platform.app), base_url="http://127.0.0.1:8000"
        ) as client:
            return await client.request(method, url, **kwargs)

    async def restore(self) -> None:
        """Put back what an allowed call may have removed (an alias, a deployment)."""
        for name in self.names:
            await self.admin.put(f"/api/v1/models/{name}/aliases/prod", json={"version": 1})
            await self.admin.post("/api/v1/deployments", json={"model": name})
        routes = []
        for name in self.names:
            version = self.platform.services.registry.resolve(ModelRef(name, version=1))
            routes.append(Route(name, name, "1", version.signature, desired=1))
        self.platform.gateway.table.publish(routes)

    names: tuple[str, ...] = ()


def _body(method: str, path: str, name: str) -> dict[str, Any]:
    if path.endswith("/aliases/{alias}"):
        return {"version": 1}
    if path.endswith("/optimize"):
        return {"level": "bogus"}
    if path == "/api/v1/deployments":
        return {"model": name}
    if path == "/api/v1/keys":
        return {"name": "made", "role": "admin"}  # unscoped: refused to every scoped key
    if path == "/api/v1/keys/{key_id}":
        return {"models": ["*"]}
    if "/infer" in path:
        return IRIS_REQUEST
    if path == "/v1/chat/completions":
        return {"model": name, "messages": [{"role": "user", "content": "hi"}]}
    if path == "/v1/completions":
        return {"model": name, "prompt": "hi"}
    if path == "/v1/embeddings":
        return {"model": name, "input": "hi"}
    return {}


async def _world(home: Path, names: tuple[str, ...], iris: bytes) -> AsyncGenerator[World, None]:
    # the matrix sends hundreds of refused keys from one address: the failed-authentication
    # detector (tested on its own) would block it, so it counts here but never blocks
    platform = build(Settings(home=home, detection=DetectionSettings(auth_block_s=0)))
    keys = platform.services.keys
    admin_key = keys.create(KeySpec(Role.ADMIN, "all"))[1]
    scoped: dict[Role | None, str | None] = {None: None}
    for role in Role:
        scoped[role] = keys.create(KeySpec(role, role.value, [f"{IN[:5]}*"]))[1]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=platform.app),
        base_url="http://127.0.0.1:8000",
        headers={"Authorization": f"Bearer {admin_key}"},
    ) as admin:
        for name in names:
            pushed = await admin.post(
                f"/api/v1/models/{name}/versions?allow_duplicate=true", content=iris
            )
            assert pushed.status_code == 201, pushed.text
        world = World(platform, scoped, admin, names)
        await world.restore()
        yield world


@pytest.fixture
async def worlds(tmp_path: Path, iris_bytes: bytes) -> AsyncIterator[tuple[World, World]]:
    full = _world(tmp_path / "full", (IN, OUT), iris_bytes)
    bare = _world(tmp_path / "bare", (IN,), iris_bytes)
    yield await anext(full), await anext(bare)
    for world in (full, bare):
        await world.aclose()


def _may(role: Role | None, action: Any) -> bool:
    """What a key of ``role`` scoped to ``fraud-*`` (every key of the matrix) may do."""
    if action is PUBLIC:
        return True
    if role is None or action in UNSCOPED_ONLY:  # keys and the master key: unscoped admins only
        return False
    return action is ANY_KEY or action in ALLOWED[role]


async def test_every_route_method_role_and_scope(worlds: tuple[World, World]) -> None:
    full, bare = worlds
    spec = (await full.admin.get("/openapi.json")).json()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert documented == set(MANAGEMENT), "a route without an expectation in this test"
    checked = 0
    for (method, path), (action, names) in {**MANAGEMENT, **EXTRA}.items():
        for role in ROLES:
            may = _may(role, action)
            if may and (method, path) in NOT_CALLED_WHEN_ALLOWED:
                continue
            where = f"{method} {path} as {role}"
            inside = await full.call(role, method, path, IN)
            if method != "GET":  # put back what the call may have changed
                await full.restore()
            outside = await full.call(role, method, path, OUT)
            missing = await bare.call(role, method, path, OUT)
            if method != "GET":
                await full.restore()
                await bare.restore()
            checked += 1
            if role is None and action is not PUBLIC:
                assert inside.status_code == outside.status_code == 401, where
                continue
            if not may:
                assert inside.status_code == outside.status_code == 403, where
                continue
            refused = (401, 403, 404) if names else (401, 403)  # a node or key id may not exist
            assert inside.status_code not in refused, (where, inside.text)
            if names == "push":  # pushing is refused outside the scope, whether or not it exists
                assert outside.status_code == missing.status_code == 403, where
            elif names is not None:
                assert outside.status_code == 404, (where, outside.text)
                assert outside.content == missing.content, where
                assert outside.headers.get("content-type") == missing.headers.get("content-type"), (
                    where
                )
            if path in LISTS:  # every key here, the admin one too, is scoped
                assert f'"{OUT}"' not in outside.text, where
                assert f'model="{OUT}"' not in outside.text, where
    assert checked > 200


async def test_admin_lists_see_everything_and_scoped_ones_do_not(worlds) -> None:
    full, _ = worlds
    listed = (await full.admin.get("/api/v1/models")).json()
    assert {m["name"] for m in listed} == {IN, OUT}
    viewer = (await full.call(Role.VIEWER, "GET", "/api/v1/models", IN)).json()
    assert {m["name"] for m in viewer} == {IN}
    deployments = (await full.call(Role.OPERATOR, "GET", "/api/v1/deployments", IN)).json()
    assert {d["name"] for d in deployments} == {IN}
    stats = (await full.call(Role.INVOKER, "GET", "/v2/models/stats", IN)).json()
    assert {s["name"] for s in stats["model_stats"]} == {IN}


GRPC_NAME_FIELDS = ("name", "model_name")


async def _grpc_call(port: int, method: str, key: str | None, name: str) -> tuple[Any, str]:
    descriptor = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name[method]
    request = getattr(pb, descriptor.input_type.name)()
    for field in GRPC_NAME_FIELDS:
        if field in descriptor.input_type.fields_by_name:
            setattr(request, field, name)
    if method == "ModelInfer":
        request.inputs.add(name="float_input", datatype="FP32", shape=[1, 4])
        request.inputs[0].contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated
        try:
            await getattr(stub, method)(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


GRPC_EXPECT = {
    "ServerLive": PUBLIC,
    "ServerReady": PUBLIC,
    "ServerMetadata": ANY_KEY,
    "ModelReady": Action.INFER,
    "ModelMetadata": Action.INFER,
    "ModelInfer": Action.INFER,
}


async def test_every_grpc_method_role_and_scope(worlds: tuple[World, World]) -> None:
    servers, ports = [], []
    for world in worlds:
        server = create_grpc_server(
            world.platform.gateway, world.platform.services.keys, "test", 1 << 20
        )
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    try:
        methods = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
        for method in methods:
            action = GRPC_EXPECT.get(method)
            for role in ROLES:
                key_full, key_bare = worlds[0].keys[role], worlds[1].keys[role]
                inside = await _grpc_call(ports[0], method, key_full, IN)
                outside = await _grpc_call(ports[0], method, key_full, OUT)
                missing = await _grpc_call(ports[1], method, key_bare, OUT)
                where = f"{method} as {role}"
                if action is None:  # not served: the same answer for everyone
                    assert inside[0] == outside[0] == grpc.StatusCode.UNIMPLEMENTED, where
                elif action is PUBLIC:
                    assert inside[0] == grpc.StatusCode.OK, where
                elif role is None:
                    assert inside[0] == outside[0] == grpc.StatusCode.UNAUTHENTICATED, where
                elif not _may(role, action):
                    assert inside[0] == outside[0] == grpc.StatusCode.PERMISSION_DENIED, where
                else:
                    bad = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                           grpc.StatusCode.NOT_FOUND)  # fmt: skip
                    assert inside[0] not in bad, (where, inside)
                    if action is Action.INFER:
                        assert outside[0] == grpc.StatusCode.NOT_FOUND, where
                        assert outside == missing, where
    finally:
        for server in servers:
            await server.stop(None)


async def test_lineage_and_nodes_name_no_model_outside_the_scope(
    platform: Platform, admin_key: str, iris_bytes: bytes
) -> None:
    viewer = platform.services.keys.create(KeySpec(Role.VIEWER, "v", ["fraud-*"]))[1]
    transport = httpx.ASGITransport(app=platform.app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000",
                          headers={"Authorization": f"Bearer {admin_key}"}) as admin,
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000",
                          headers={"Authorization": f"Bearer {viewer}"}) as scoped,
    ):  # fmt: skip
        for name, parent in (("secret-base", None), ("fraud-a", "secret-base:1"),
                             ("fraud-b", "fraud-a:1")):  # fmt: skip
            query = {"allow_duplicate": "true", **({"parent": parent} if parent else {})}
            pushed = await admin.post(f"/api/v1/models/{name}/versions", params=query,
                                      content=iris_bytes)  # fmt: skip
            assert pushed.status_code == 201, pushed.text
        assert (await admin.post("/api/v1/deployments", json={"model": "secret-base"})).is_success
        assert (await admin.get("/api/v1/models/fraud-a")).json()["versions"][0][
            "parent"
        ] == "secret-base:1"  # the admin sees the lineage
        seen = [
            await scoped.get("/api/v1/models/fraud-a"),
            await scoped.get("/api/v1/models/fraud-a/versions/1"),
            await scoped.get("/api/v1/models/fraud-a/versions/latest"),
            await scoped.get("/api/v1/nodes"),
        ]
        assert all(r.status_code == 200 for r in seen), [r.text for r in seen]
        assert not any("secret" in r.text for r in seen), [r.text for r in seen]
        assert seen[1].json()["parent"] is None
        in_scope = await scoped.get("/api/v1/models/fraud-b/versions/1")
        assert in_scope.json()["parent"] == "fraud-a:1"  # lineage inside the scope stays
        for node in seen[3].json():  # replicas per node: a count, never a name
            assert isinstance(node["replicas"], int)


async def test_a_scoped_admin_can_neither_widen_a_key_nor_touch_keys(
    platform: Platform, admin_key: str
) -> None:
    keys = platform.services.keys
    scoped, secret = keys.create(KeySpec(Role.ADMIN, "fraud-admin", ["fraud-*"]))
    victim = keys.create(KeySpec(Role.INVOKER, "app", ["fraud-a"]))[0]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=platform.app),
        base_url="http://127.0.0.1:8000",
        headers={"Authorization": f"Bearer {secret}"},
    ) as api:
        calls = [
            ("POST", "/api/v1/keys", {"name": "wide", "role": "admin"}),
            ("POST", "/api/v1/keys", {"name": "narrow", "role": "invoker", "models": ["fraud-a"]}),
            ("PATCH", f"/api/v1/keys/{scoped.id}", {"models": ["*"]}),
            ("PATCH", f"/api/v1/keys/{victim.id}", {"models": ["*"]}),
            ("POST", f"/api/v1/keys/{victim.id}/rotate", {}),
            ("DELETE", f"/api/v1/keys/{victim.id}", None),
            ("GET", "/api/v1/keys", None),
            ("GET", f"/api/v1/keys/{victim.id}", None),
            ("POST", "/api/v1/admin/rotate-master-key", None),
        ]
        for method, url, body in calls:
            answer = await api.request(method, url, json=body)
            assert answer.status_code == 403, (method, url, answer.text)
            assert "without a model scope" in answer.json()["error"]
    assert keys.get(scoped.id).models == ("fraud-*",)
    assert keys.get(victim.id) == victim  # neither widened, rotated nor revoked
    assert [k.name for k in keys.list()].count("wide") == 0
    # and the last unscoped admin cannot be scoped (nobody could manage keys after)
    admin_id = admin_key.split("_")[1]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=platform.app),
        base_url="http://127.0.0.1:8000",
        headers={"Authorization": f"Bearer {admin_key}"},
    ) as admin:
        narrowed = await admin.patch(f"/api/v1/keys/{admin_id}", json={"models": ["fraud-*"]})
        assert narrowed.status_code == 409, narrowed.text


async def test_errors_name_no_deployment_outside_the_scope(
    platform: Platform, admin_key: str, iris_bytes: bytes
) -> None:
    keys = platform.services.keys
    publisher = keys.create(KeySpec(Role.PUBLISHER, "p", ["fraud-*"]))[1]
    operator = keys.create(KeySpec(Role.OPERATOR, "o", ["fraud-*"]))[1]
    transport = httpx.ASGITransport(app=platform.app)

    def client(key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000",
                                 headers={"Authorization": f"Bearer {key}"})  # fmt: skip

    async with client(admin_key) as admin, client(publisher) as pub, client(operator) as op:
        for name in ("fraud-a", "hidden-model"):
            pushed = await admin.post(f"/api/v1/models/{name}/versions", content=iris_bytes,
                                      params={"allow_duplicate": "true"})  # fmt: skip
            assert pushed.status_code == 201, pushed.text
        # an in-scope version served under a name the publisher cannot see
        made = await admin.post("/api/v1/deployments", json={"model": "fraud-a:1",
                                                             "name": "hidden-name"})  # fmt: skip
        assert made.is_success, made.text
        # an in-scope name serving a model the operator cannot see
        made = await admin.post("/api/v1/deployments", json={"model": "hidden-model",
                                                             "name": "fraud-x"})  # fmt: skip
        assert made.is_success, made.text
        for url in ("/api/v1/models/fraud-a/versions/1", "/api/v1/models/fraud-a"):
            refused = await pub.delete(url)
            assert refused.status_code == 409, refused.text
            assert "hidden" not in refused.text
            assert "1 deployment" in refused.text
        assert (await op.get("/api/v1/deployments/fraud-x")).status_code == 404
        over = await op.post("/api/v1/deployments", json={"model": "fraud-a", "name": "fraud-x"})
        assert over.status_code in (404, 409), over.text
        assert "hidden" not in over.text
        assert (await admin.get("/api/v1/deployments/fraud-x")).json()["model"] == "hidden-model"
