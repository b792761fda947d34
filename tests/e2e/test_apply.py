"""The platform as a file, as a user runs it: apply builds, applying again changes nothing,
export | apply --dry-run prints no change, a bad spec says where it is wrong."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from tests.unit.test_spec import BAD

from modelplane.testing import scores_onnx

pytestmark = pytest.mark.e2e

SPEC = """
models:
  - name: lin
    source: models/lin.onnx
    description: the linear scorer
    tags: {team: ml}
    aliases: [production]
  - name: wide
    source: models/wide.onnx
deployments:
  - name: lin
    model: lin@production
    replicas: 2
  - name: lin-batch
    model: lin@production
    config: {max_batch_size: 8, max_queued_requests: 64}
    resources: {cpu: 0.5}
  - name: wide
    model: wide
    autoscaling: {min_replicas: 1, max_replicas: 2}
    rollout: {steps: [50, 100], interval_s: 60}
keys:
  - name: ci
    role: invoker
    models: ["lin*"]
  - name: dashboards
    role: viewer
    rate_limit: 5
"""


def state(server) -> dict[str, Any]:
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as client:
        models = client.get("/api/v1/models").json()
        deployments = client.get("/api/v1/deployments").json()
        keys = client.get("/api/v1/keys").json()
    return {
        "versions": {m["name"]: m["latest_version"] for m in models},
        "deployments": {d["name"]: (d["ref"], d["updated_at"], d["desired_replicas"])
                        for d in deployments},
        "keys": sorted((k["name"], k["role"], k["id"]) for k in keys),
    }  # fmt: skip


def test_apply_is_idempotent_and_export_round_trips(server_factory, tmp_path) -> None:
    server = server_factory()
    server.start()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "lin.onnx").write_bytes(scores_onnx())
    (tmp_path / "models" / "wide.onnx").write_bytes(scores_onnx(scale=3.0))
    spec = tmp_path / "platform.yaml"
    spec.write_text(SPEC)

    planned = server.cli("apply", "-f", str(spec), "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert "+ push model lin: from models/lin.onnx" in planned.stdout
    assert (
        "~ alias lin@production: new -> the version pushed from models/lin.onnx" in planned.stdout
    )
    assert "8 change(s); dry run: nothing was changed" in planned.stdout
    assert state(server)["versions"] == {}

    applied = server.cli("apply", "-f", str(spec))
    assert applied.returncode == 0, applied.stderr
    assert "applied 8 change(s)" in applied.stdout
    secret = next(w for w in applied.stdout.split() if w.startswith("mpk_"))
    built = state(server)
    assert built["versions"] == {"lin": 1, "wide": 1}
    assert {n: ref for n, (ref, _, _) in built["deployments"].items()} == {
        "lin": "lin:1", "lin-batch": "lin:1", "wide": "wide:1"}  # fmt: skip
    assert built["deployments"]["lin"][2] == 2
    assert [(n, r) for n, r, _ in built["keys"]] == [
        ("admin", "admin"), ("ci", "invoker"), ("dashboards", "viewer")]  # fmt: skip
    lin = server.deployment("lin-batch")
    assert lin["config"]["max_batch_size"] == 8
    assert lin["resources"]["cpu"] == 0.5
    assert server.deployment("wide")["rollout"]["steps"] == [50, 100]
    # the created key works, within its scope
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"}) as ci:
        row = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        assert ci.post("/v2/models/lin/infer", json=row).status_code == 200
        assert ci.post("/v2/models/wide/infer", json=row).status_code == 404

    again = server.cli("apply", "-f", str(spec))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "no change"
    assert state(server) == built  # nothing was pushed, redeployed or created

    exported = server.cli("export")
    assert exported.returncode == 0, exported.stderr
    doc = yaml.safe_load(exported.stdout)
    assert [m["name"] for m in doc["models"]] == ["lin", "wide"]
    assert doc["models"][0] == {"name": "lin", "version": 1, "aliases": ["production"]}
    replayed = server.cli("apply", "-f", "-", "--dry-run", stdin=exported.stdout)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "no change"

    # a change shows as a diff and, in a dry run, changes nothing
    spec.write_text(SPEC.replace("    replicas: 2\n", "    replicas: 3\n"))
    diff = server.cli("apply", "-f", str(spec), "--dry-run")
    assert "~ deployment lin: replicas 2 -> 3" in diff.stdout
    assert "1 change(s); dry run" in diff.stdout
    assert state(server) == built

    # a bad spec: every problem with the path of its field, nothing applied
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    refused = server.cli("apply", "-f", str(bad))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    for line in ("deployments[0].replicas: Input should be less than or equal to 64",
                 "deployments[0].autoscaling.min_replicas: Input should be a valid integer",
                 "deployments[1].naem: Extra inputs are not permitted",
                 "keys[0].role: Input should be"):  # fmt: skip
        assert line in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert state(server) == built

    # the JSON Schema editors use agrees with the server about both files
    schema = json.loads(server.cli("export", "--schema").stdout)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(yaml.safe_load(SPEC))) == []
    assert list(validator.iter_errors(yaml.safe_load(BAD)))
