"""The management API and auth, in process, on real SQLite and on a real PostgreSQL, with a real
blob folder."""

from __future__ import annotations

import re
import stat
from typing import Any

import httpx
import pytest

from modelplane.server import Platform, build
from modelplane.settings import Settings

pytestmark = pytest.mark.databases

URL = "http://127.0.0.1:8000"  # what the default allowed hosts include
SAME_ORIGIN = {"Origin": URL}  # what a browser sends with the pages' own form posts


async def test_admin_key_is_written_once_with_mode_0600(platform: Platform, settings) -> None:
    path = settings.admin_key_path
    assert platform.admin_key_created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text()
    assert key.startswith("mpk_")
    again = build(settings)
    assert not again.admin_key_created
    assert path.read_text() == key
    again.engine.dispose()


async def test_only_health_is_public(platform: Platform) -> None:
    transport = httpx.ASGITransport(app=platform.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as anon:
        assert (await anon.get("/v2/health/live")).status_code == 200
        assert (await anon.get("/v2/health/ready")).status_code == 200
        for method, path in [
            ("GET", "/v2"),
            ("GET", "/api/v1/models"),
            ("POST", "/v2/models/iris/infer"),
            ("GET", "/v2/models/iris"),
            ("POST", "/api/v1/deployments"),
            ("GET", "/openapi.json"),
            ("GET", "/docs"),
            ("GET", "/docs/static/swagger-ui-bundle.js"),
        ]:
            response = await anon.request(method, path)
            assert response.status_code == 401, path
            error = response.json()["error"]
            assert "Authorization: Bearer" in error
            # both places the CLI and SDK take a key from are named
            assert "MODELPLANE_API_KEY" in error
            assert "admin.key" in error
            assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = await anon.get("/api/v1/models", headers={"Authorization": "Bearer mpk_x_y"})
        assert wrong.status_code == 401
        assert "invalid or revoked" in wrong.json()["error"]
        browser = await anon.get("/", headers={"Accept": "text/html"})
        assert browser.status_code == 303
        assert browser.headers["location"] == "/login"


async def test_browser_login_sets_a_cookie_that_authenticates(platform, admin_key) -> None:
    transport = httpx.ASGITransport(app=platform.app)
    async with httpx.AsyncClient(transport=transport, base_url=URL, headers=SAME_ORIGIN) as browser:
        assert (await browser.get("/login")).status_code == 200
        response = await browser.post("/login", data={"key": admin_key})
        assert response.status_code == 303
        assert (await browser.get("/api/v1/models")).status_code == 200
        assert "modelplane" in (await browser.get("/")).text


async def test_browser_login_with_a_wrong_key_stays_on_the_form_with_a_message(platform) -> None:
    transport = httpx.ASGITransport(app=platform.app)
    async with httpx.AsyncClient(transport=transport, base_url=URL, headers=SAME_ORIGIN) as browser:
        for key in ["mpk_x_y", "   "]:
            response = await browser.post("/login", data={"key": key})
            assert response.status_code == 401
            assert response.headers["content-type"].startswith("text/html")
            assert "set-cookie" not in response.headers
            assert "That key is not valid or was revoked" in response.text
            assert '<form method="post" action="/login">' in response.text
        assert "not valid" not in (await browser.get("/login")).text


async def test_a_page_load_with_a_dead_cookie_goes_to_sign_in_and_drops_it(platform) -> None:
    transport = httpx.ASGITransport(app=platform.app)
    async with httpx.AsyncClient(transport=transport, base_url=URL, headers=SAME_ORIGIN) as browser:
        browser.cookies.set("modelplane_key", "mpk_revoked_key", domain="127.0.0.1")
        page = await browser.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 303
        assert page.headers["location"] == "/login?reason=invalid"
        assert page.headers["set-cookie"].startswith('modelplane_key="";')
        assert "max-age=0" in page.headers["set-cookie"].lower()
        assert "modelplane_key" not in browser.cookies
        assert "not valid or was revoked" in (await browser.get(page.headers["location"])).text
        # a script with a bad bearer key still gets the JSON error, not a redirect
        scripted = await browser.get(
            "/", headers={"Accept": "text/html", "Authorization": "Bearer mpk_x_y"}
        )
        assert scripted.status_code == 401
        assert "invalid or revoked" in scripted.json()["error"]


async def test_sign_out_expires_the_cookie(platform, admin_key) -> None:
    transport = httpx.ASGITransport(app=platform.app)
    async with httpx.AsyncClient(transport=transport, base_url=URL, headers=SAME_ORIGIN) as browser:
        await browser.post("/login", data={"key": admin_key})
        assert (await browser.get("/api/v1/models")).status_code == 200
        response = await browser.post("/logout")
        assert response.status_code == 303
        assert response.headers["location"] == "/login"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith('modelplane_key="";')
        for attribute in ["max-age=0", "path=/", "httponly", "samesite=strict"]:
            assert attribute in cookie.lower(), cookie
        assert "modelplane_key" not in browser.cookies
        assert (await browser.get("/api/v1/models")).status_code == 401
        # signing out needs no working key: a dead cookie can always be dropped
        assert (await browser.post("/logout")).status_code == 303


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_the_sign_in_cookie_is_secure_over_https(platform, admin_key, scheme) -> None:
    url = f"{scheme}://127.0.0.1:8000"
    name = "__Host-modelplane_key" if scheme == "https" else "modelplane_key"
    transport = httpx.ASGITransport(app=platform.app)
    async with httpx.AsyncClient(transport=transport, base_url=url,
                                 headers={"Origin": url}) as browser:  # fmt: skip
        signed_in = await browser.post("/login", data={"key": admin_key})
        assert signed_in.status_code == 303, signed_in.text
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith(f"{name}="), cookie
        attributes = [a.strip().lower() for a in cookie.split(";")]
        assert ("secure" in attributes) == (scheme == "https"), cookie
        assert "path=/" in attributes
        assert not any(a.startswith("domain") for a in attributes)
        assert (await browser.get("/api/v1/models")).status_code == 200  # the cookie works
        changed = await browser.post("/api/v1/keys", json={"name": "c", "role": "viewer"})
        assert changed.status_code == 201, changed.text  # same-origin change by cookie
        signed_out = await browser.post("/logout")
        assert signed_out.status_code == 303
        gone = signed_out.headers["set-cookie"]
        assert gone.startswith(f'{name}="";'), gone
        assert "max-age=0" in gone.lower(), gone
        assert ("secure" in gone.lower()) == (scheme == "https"), gone
        assert (await browser.get("/api/v1/models")).status_code == 401


ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


async def test_api_docs_load_nothing_from_other_hosts(api: httpx.AsyncClient) -> None:
    response = await api.get("/docs")
    assert response.status_code == 200
    html = response.text
    hosts = re.findall(r"(?:https?:)?//([^/\s\"'<>]+)", html)
    assert hosts == [], hosts  # every URL on the page is a path on this server
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert any(a.endswith(".js") for a in assets), assets
    for asset in assets:
        got = await api.get(asset)
        assert got.status_code == 200, asset
        expected = ASSET_TYPES[asset[asset.rindex(".") :]]
        assert got.headers["content-type"].split(";")[0] == expected, asset
    # no inline script (the page runs under a CSP without 'unsafe-inline'): it is a file
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
    spec = re.search(r"""url: ["']([^"']+)["']""", (await api.get("/docs/init.js")).text)
    assert spec is not None
    assert spec.group(1) == "/openapi.json"
    assert (await api.get("/redoc")).status_code == 404  # ReDoc's bundle fetches its logo online


async def test_push_list_show_alias(api: httpx.AsyncClient, iris_bytes: bytes) -> None:
    response = await api.post(
        "/api/v1/models/iris/versions",
        content=iris_bytes,
        params={"description": "first", "tag": ["team=ml", "stage=dev"]},
    )
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["ref"] == "iris:1"
    assert version["tags"] == {"team": "ml", "stage": "dev"}
    assert len(version["digest"]) == 64
    assert version["created_by"] == "admin"
    assert (await api.put("/api/v1/models/iris/aliases/production", json={"version": 1})).is_success
    models = (await api.get("/api/v1/models")).json()
    assert models[0]["name"] == "iris"
    assert models[0]["aliases"] == {"production": 1}
    by_alias = (await api.get("/api/v1/models/iris/versions/production")).json()
    assert by_alias["version"] == 1
    detail = (await api.get("/api/v1/models/iris")).json()
    assert [v["version"] for v in detail["versions"]] == [1]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "message"),
    [
        ("POST", "/api/v1/models/iris/versions", {"content": b"nope"}, 422, "not a valid ONNX"),
        ("POST", "/api/v1/models/Bad!/versions", {"content": b"x"}, 400, "invalid model name"),
        ("POST", "/api/v1/models/iris/versions?tag=oops", {"content": b"x"}, 400, "KEY=VALUE"),
        ("GET", "/api/v1/models/ghost", {}, 404, "model 'ghost' not found"),
        ("POST", "/api/v1/deployments", {"json": {"model": "ghost"}}, 404, "not found"),
        ("POST", "/api/v1/deployments", {"json": {"model": "a:b"}}, 400, "NAME:VERSION"),
        ("POST", "/api/v1/deployments", {"json": {"replicas": 1}}, 400, "model"),
        ("POST", "/api/v1/deployments", {"content": b"{bad"}, 400, "invalid request"),
        ("GET", "/v2/models/ghost", {}, 404, "not deployed"),
    ],
)
async def test_bad_management_calls_get_clear_errors(api, method, path, kwargs, status, message):
    response = await api.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


async def test_upload_limit_is_413(settings: Settings, tmp_path, iris_bytes) -> None:
    small = settings.model_copy(
        update={"registry": settings.registry.model_copy(update={"max_upload_bytes": 100})}
    )
    platform = build(small)
    key = small.admin_key_path.read_text().strip()
    transport = httpx.ASGITransport(app=platform.app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://127.0.0.1:8000",
        headers={"Authorization": f"Bearer {key}"},
    ) as api:
        response = await api.post("/api/v1/models/iris/versions", content=iris_bytes)
        assert response.status_code == 413
        assert "MAX_UPLOAD_BYTES" in response.json()["error"]
        assert (await api.get("/api/v1/models")).json() == []
    platform.engine.dispose()


async def test_pushing_the_same_content_again_is_refused_unless_allowed(api, iris_bytes) -> None:
    first = await api.post("/api/v1/models/iris/versions", content=iris_bytes)
    assert first.status_code == 201
    again = await api.post("/api/v1/models/iris/versions", content=iris_bytes)
    assert again.status_code == 409
    error = again.json()["error"]
    assert "same content as iris:1" in error
    assert "--allow-duplicate" in error
    assert [v["version"] for v in (await api.get("/api/v1/models/iris")).json()["versions"]] == [1]
    # the same bytes under another name are a different model: accepted
    assert (await api.post("/api/v1/models/other/versions", content=iris_bytes)).status_code == 201
    allowed = await api.post(
        "/api/v1/models/iris/versions", content=iris_bytes, params={"allow_duplicate": True}
    )
    assert allowed.status_code == 201
    assert allowed.json()["version"] == 2
    assert allowed.json()["digest"] == first.json()["digest"]


async def test_deploy_records_desired_state_and_blocks_deletion(api, iris_bytes) -> None:
    await api.post("/api/v1/models/iris/versions", content=iris_bytes)
    response = await api.post("/api/v1/deployments", json={"model": "iris:1", "replicas": 2})
    assert response.status_code == 200, response.text
    deployment = response.json()
    assert deployment["desired_replicas"] == 2
    assert deployment["state"] == "pending"
    assert deployment["endpoint"] == "/v2/models/iris/infer"
    conflict = await api.delete("/api/v1/models/iris/versions/1")
    assert conflict.status_code == 409
    assert "used by 1 deployment;" in conflict.json()["error"]
    assert (await api.delete("/api/v1/deployments/iris")).status_code == 204
    assert (await api.delete("/api/v1/models/iris/versions/1")).status_code == 204


async def test_a_redeploy_changes_only_what_it_names(api, iris_bytes) -> None:
    for _ in range(2):
        pushed = await api.post(
            "/api/v1/models/iris/versions", content=iris_bytes, params={"allow_duplicate": True}
        )
        assert pushed.is_success

    async def deploy(**body: object) -> dict[str, Any]:
        response = await api.post("/api/v1/deployments", json={"model": "iris:1", **body})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    first = await deploy(
        replicas=3,
        config={"max_batch_size": 8},
        resources={"cpu": 1, "memory_mb": 2048},
        placement={"node_labels": {"disk": "ssd"}, "zones": ["a", "b"]},
    )
    assert first["desired_replicas"] == 3
    # a new version with one resource field and one placement field: the rest is kept
    second = await deploy(model="iris:2", resources={"cpu": 2}, placement={"zones": ["b"]})
    assert second["version"] == 2
    assert second["desired_replicas"] == 3
    assert second["config"]["max_batch_size"] == 8
    assert second["resources"] == {"cpu": 2, "memory_mb": 2048, "gpus": 0}
    assert second["placement"]["node_labels"] == {"disk": "ssd"}
    assert second["placement"]["zones"] == ["b"]
    # autoscaling turned on with a minimum only: the count it has stays within reach
    scaled = await deploy(autoscaling={"min_replicas": 2})
    assert (scaled["autoscaling"]["min_replicas"], scaled["autoscaling"]["max_replicas"]) == (2, 3)
    assert scaled["desired_replicas"] == 3
    scaled = await deploy(autoscaling={"max_replicas": 5})
    assert (scaled["autoscaling"]["min_replicas"], scaled["autoscaling"]["max_replicas"]) == (2, 5)
    scaled = await deploy(autoscaling={"min_replicas": 6})  # "at least 6" raises the bound
    assert (scaled["autoscaling"]["min_replicas"], scaled["autoscaling"]["max_replicas"]) == (6, 6)
    contradictions: list[tuple[dict[str, object], str]] = [
        ({"autoscaling": {"max_replicas": 1}}, "min <= max"),
        ({"autoscaling": {"min_replicas": 1}, "autoscaling_off": True}, "contradict"),
    ]
    for wrong, message in contradictions:
        bad = await api.post("/api/v1/deployments", json={"model": "iris:1", **wrong})
        assert bad.status_code == 400
        assert message in bad.json()["error"]
    # autoscaling off: fixed at the count it had
    fixed = await deploy(autoscaling_off=True)
    assert fixed["autoscaling"] is None
    assert fixed["desired_replicas"] == 6
    # a new autoscaled deployment starts at --replicas (up to it), or at its minimum
    started = await deploy(name="auto-a", replicas=3, autoscaling={"min_replicas": 0})
    assert (started["autoscaling"]["max_replicas"], started["desired_replicas"]) == (3, 3)
    idle = await deploy(name="auto-b", autoscaling={"min_replicas": 0, "max_replicas": 4})
    assert (idle["desired_replicas"], idle["state"]) == (0, "scaled to zero")
    # reset: what is not given goes back to the defaults
    reset = await deploy(reset=True, replicas=1)
    assert reset["resources"] == {"cpu": 0.25, "memory_mb": 512, "gpus": 0}
    assert reset["placement"]["node_labels"] == {}
    assert reset["config"]["max_batch_size"] == 32
    assert reset["autoscaling"] is None
    assert reset["desired_replicas"] == 1


async def test_openapi_documents_the_management_api(api) -> None:
    spec = (await api.get("/openapi.json")).json()
    assert "/api/v1/models/{name}/versions" in spec["paths"]
    assert "/api/v1/deployments" in spec["paths"]


async def test_status_says_when_the_controller_has_acted_on_a_deploy(
    api, platform: Platform, iris_bytes
) -> None:
    assert platform.services.leadership is not None
    await platform.services.leadership.try_once()  # as `serve` does at start: it leads
    await api.post("/api/v1/models/iris/versions", content=iris_bytes)
    await api.post("/api/v1/deployments", json={"model": "iris", "replicas": 0})
    assert (await api.get("/api/v1/deployments/iris")).json()["reconciled"] is False
    await platform.services.controller.step()
    assert (await api.get("/api/v1/deployments/iris")).json()["reconciled"] is True
    await api.post("/api/v1/deployments", json={"model": "iris", "config": {"max_batch_size": 4}})
    assert (await api.get("/api/v1/deployments/iris")).json()["reconciled"] is False


async def test_nodes_cordon_and_uncordon(api, platform: Platform) -> None:
    assert platform.services.leadership is not None
    await platform.services.leadership.try_once()  # as `serve` does at start: it leads
    await platform.services.controller.step()  # observe this machine as the one node
    [node] = (await api.get("/api/v1/nodes")).json()
    assert node["state"] == "healthy"
    assert node["capacity"]["cpu"] > 0
    missing = await api.post("/api/v1/nodes/nope/cordon", json={})
    assert missing.status_code == 404
    assert node["id"] in missing.json()["error"]
    cordoned = await api.post(f"/api/v1/nodes/{node['id']}/cordon", json={"reason": "disk swap"})
    assert cordoned.status_code == 200
    assert cordoned.json()["state"] == "cordoned"
    assert cordoned.json()["maintenance"] == "disk swap"
    await platform.services.controller.step()
    [listed] = (await api.get("/api/v1/nodes")).json()
    assert (listed["state"], listed["maintenance"]) == ("cordoned", "disk swap")
    assert (await api.delete(f"/api/v1/nodes/{node['id']}/cordon")).status_code == 204
    assert (await api.delete(f"/api/v1/nodes/{node['id']}/cordon")).status_code == 404
    await platform.services.controller.step()
    [listed] = (await api.get("/api/v1/nodes")).json()
    assert (listed["state"], listed["maintenance"]) == ("healthy", "")
    too_long = await api.post(f"/api/v1/nodes/{node['id']}/cordon", json={"reason": "x" * 300})
    assert too_long.status_code in (400, 422)
