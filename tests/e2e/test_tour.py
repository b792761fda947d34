"""The V2 surface as a user meets it through the CLI, the SDK and Triton's own client: push,
deploy, call, bad input, exit codes. (The README tour itself runs in test_readme_tour.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_iris
from tritonclient.utils import InferenceServerException

from modelplane.testing import IRIS_REQUEST

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def deployed(shared_server, tmp_path_factory, iris_bytes) -> Any:
    path = tmp_path_factory.mktemp("model") / "iris.onnx"
    path.write_bytes(iris_bytes)
    pushed = shared_server.cli(
        "push", str(path), "--name", "iris", "--description", "tour", "--tag", "team=ml"
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed iris:1" in pushed.stdout
    alias = shared_server.cli("models", "alias", "iris:1", "production")
    assert alias.returncode == 0, alias.stderr
    deploy = shared_server.cli("deploy", "iris@production", "--replicas", "2")
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert "ready" in deploy.stdout
    return shared_server


def triton_client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


@pytest.mark.parametrize("binary", [True, False])
def test_triton_client_works_unchanged(deployed, iris_sklearn, binary: bool) -> None:
    client = triton_client(deployed)
    headers = deployed.auth
    assert client.is_server_live(headers=headers)
    assert client.is_server_ready(headers=headers)
    assert client.is_model_ready("iris", headers=headers)
    meta = client.get_model_metadata("iris", headers=headers)
    assert meta["inputs"] == [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}]
    server_meta = client.get_server_metadata(headers=headers)
    assert "binary_tensor_data" in server_meta["extensions"]

    x = load_iris().data.astype(np.float32)
    tensor = triton.InferInput("float_input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=binary),
        triton.InferRequestedOutput("label", binary_data=binary),
    ]
    result = client.infer("iris", [tensor], outputs=outputs, request_id="r1", headers=headers)
    assert result.get_response()["id"] == "r1"
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), iris_sklearn.predict_proba(x), atol=1e-5
    )
    np.testing.assert_array_equal(result.as_numpy("label"), iris_sklearn.predict(x))
    # no outputs named: the client asks for all of them in binary
    result = client.infer("iris", [tensor], headers=headers)
    assert result.as_numpy("probabilities").shape == (150, 3)


def test_without_a_key_everything_but_health_is_401(deployed) -> None:
    client = triton_client(deployed)
    assert client.is_server_live()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("iris")
    assert info.value.status() == "401"
    for path in ["/v2/models/iris/infer", "/api/v1/deployments"]:
        response = httpx.post(f"{deployed.url}{path}", json={})
        assert response.status_code == 401


GOOD = IRIS_REQUEST


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/ghost/infer", GOOD, 404, "not deployed"),
        ("/v2/models/iris/versions/7/infer", GOOD, 404, "version 7"),
        ("/v2/models/iris/infer", b"{oops", 400, "not valid JSON"),
        ("/v2/models/iris/infer", {"inputs": []}, 400, "non-empty list"),
        ("/v2/models/iris/infer", {"inputs": [{**GOOD["inputs"][0], "datatype": "INT8"}]},
         400, "expected datatype FP32"),
        ("/v2/models/iris/infer", {"inputs": [{**GOOD["inputs"][0], "shape": [2, 4]}]},
         400, "needs 8 elements"),
        ("/v2/models/iris/infer", {"inputs": [{**GOOD["inputs"][0], "shape": [-1, 4]}]},
         400, "negative"),
        ("/v2/models/iris/infer", {"inputs": [{**GOOD["inputs"][0], "shape": [2**40, 4]}]},
         400, "over the limit"),
        ("/v2/models/iris/infer", b"0" * 70_000, 413, "over the limit of 65536 bytes"),
    ],
)  # fmt: skip
def test_bad_inputs_get_4xx_and_the_next_request_works(deployed, path, body, status, message):
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(f"{deployed.url}{path}", headers=deployed.auth, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    good = httpx.post(f"{deployed.url}/v2/models/iris/infer", headers=deployed.auth, json=GOOD)
    assert good.status_code == 200


def test_raw_binary_body_and_binary_outputs(deployed, iris_sklearn) -> None:
    x = load_iris().data[:3].astype(np.float32)
    response = httpx.post(
        f"{deployed.url}/v2/models/iris/infer",
        content=x.tobytes(),
        headers={**deployed.auth, "Inference-Header-Content-Length": "0"},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    doc = json.loads(response.content[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    names = [o["name"] for o in doc["outputs"]]
    blobs = response.content[length:]
    assert len(blobs) == sum(sizes)
    index = names.index("probabilities")
    start = sum(sizes[:index])
    proba = np.frombuffer(blobs[start : start + sizes[index]], dtype=np.float32).reshape(3, 3)
    np.testing.assert_allclose(proba, iris_sklearn.predict_proba(x), atol=1e-5)


def test_cli_predict_and_tables(deployed, tmp_path: Path) -> None:
    result = deployed.cli("predict", "iris", "--input", '{"float_input": [[5.1, 3.5, 1.4, 0.2]]}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["label"] == [0]
    request = tmp_path / "req.json"
    request.write_text(json.dumps(GOOD))
    result = deployed.cli("predict", "iris", "-i", str(request))
    assert json.loads(result.stdout)["model_name"] == "iris"
    listing = deployed.cli("deployments", "list")
    assert "iris@production" not in listing.stdout  # deployments show the resolved version
    assert "iris:1" in listing.stdout
    assert "2/2" in listing.stdout
    status = deployed.cli("deployments", "status", "iris", "--json")
    info = json.loads(status.stdout)
    assert [r["state"] for r in info["replicas"]] == ["ready", "ready"]
    shown = deployed.cli("models", "show", "iris")
    assert "float_input" in shown.stdout
    assert "production" in shown.stdout
    assert "tour" in shown.stdout  # the description given at push
    assert "team=ml" in shown.stdout  # and its tags


def test_cli_exit_codes_scripts_can_rely_on(deployed) -> None:
    assert deployed.cli("models", "show", "ghost").returncode == 3
    bad_key = deployed.cli("models", "list", env={"MODELPLANE_API_KEY": "mpk_no_pe"})
    assert bad_key.returncode == 4
    assert "invalid or revoked" in bad_key.stderr
    nowhere = deployed.cli("models", "list", env={"MODELPLANE_URL": "http://127.0.0.1:9"})
    assert nowhere.returncode == 6
    assert "cannot reach modelplane" in nowhere.stderr
    in_use = deployed.cli("models", "delete", "iris:1")
    assert in_use.returncode == 5
    bad = deployed.cli("predict", "iris", "--input", "{nope")
    assert bad.returncode == 2


def test_sdk_deploy_waits_until_ready_like_the_cli(deployed) -> None:
    from modelplane import Client, Unavailable

    with Client(deployed.url, deployed.key) as client:
        info = client.deploy("iris:1", name="sdk", replicas=1)
        assert (info["state"], info["ready_replicas"]) == ("ready", 1)
        assert client.infer("sdk", {"float_input": [[5.1, 3.5, 1.4, 0.2]]})["label"].tolist() == [0]
        # what can never be placed is said, with the reason, instead of waiting out the timeout
        with pytest.raises(Unavailable, match="needs 512 CPU per replica"):
            client.deploy("iris:1", name="huge", resources={"cpu": 512}, timeout=60)
        client.undeploy("huge")
        client.undeploy("sdk")


def test_sdk_infer(deployed, iris_sklearn) -> None:
    from modelplane import Client

    x = load_iris().data[:5]
    with Client(deployed.url, deployed.key) as client:
        out = client.infer("iris", {"float_input": x})
    np.testing.assert_allclose(
        out["probabilities"], iris_sklearn.predict_proba(x.astype(np.float32)), atol=1e-5
    )
