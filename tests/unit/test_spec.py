"""The platform spec's format: errors name the field's path; the shipped JSON Schema is the one
the code generates, and it accepts and refuses what the parser does."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from modelplane import spec
from modelplane.errors import InvalidInput

GOOD = """
models:
  - name: iris
    source: models/iris.onnx
    aliases: [production]
  - name: flowers
    version: 2
deployments:
  - name: iris
    model: iris@production
    replicas: 2
    config: {max_batch_size: 8}
    rollout: {steps: [10, 50, 100], interval_s: 60}
keys:
  - name: ci
    role: invoker
    models: ["iris*"]
"""

BAD = """
models:
  - name: iris
deployments:
  - name: iris
    model: iris
    replicas: 500
    autoscaling: {min_replicas: many}
  - naem: typo
keys:
  - name: ci
    role: root
"""


def test_a_good_spec_parses_and_dumps_to_itself() -> None:
    parsed = spec.parse(GOOD)
    assert parsed.deployments[0].config is not None
    assert parsed.deployments[0].config.max_batch_size == 8
    assert spec.parse(spec.dump(parsed)) == parsed


def test_each_problem_is_named_by_its_path() -> None:
    with pytest.raises(InvalidInput) as caught:
        spec.parse(BAD, "platform.yaml")
    message = caught.value.message
    assert message.startswith("platform.yaml has 7 problem(s):")
    for line in (
        "models[0]: give either source (a file to push) or version (an existing one)",
        "deployments[0].replicas: Input should be less than or equal to 64",
        "deployments[0].autoscaling.min_replicas: Input should be a valid integer",
        "deployments[1].name: Field required",
        "deployments[1].model: Field required",
        "deployments[1].naem: Extra inputs are not permitted",
        "keys[0].role: Input should be 'admin', 'operator', 'publisher', 'invoker' or 'viewer'",
    ):
        assert line in message, message


def test_not_yaml_and_duplicate_names_are_refused() -> None:
    with pytest.raises(InvalidInput, match="is not valid YAML"):
        spec.parse("models: [unclosed", "x.yaml")
    with pytest.raises(InvalidInput, match="deployment names must be unique; given twice: a"):
        spec.parse("deployments: [{name: a, model: m}, {name: a, model: n}]")


def test_the_shipped_schema_is_the_generated_one_and_validates_like_the_parser() -> None:
    shipped = json.loads(spec.SCHEMA_FILE.read_text())
    assert shipped == spec.schema(), (
        "run `modelplane export --schema > src/modelplane/platform.schema.json`"
    )
    validator = jsonschema.Draft202012Validator(shipped)
    assert list(validator.iter_errors(yaml.safe_load(GOOD))) == []
    problems = {
        "/".join(map(str, e.absolute_path)) for e in validator.iter_errors(yaml.safe_load(BAD))
    }
    assert {"deployments/0/replicas", "deployments/0/autoscaling",
            "keys/0/role"} <= problems  # fmt: skip


def test_a_folder_packs_to_the_same_bytes_whenever_it_is_packed(tmp_path) -> None:
    """What lets apply find the version a folder made: the same files, the same digest."""
    import os

    from modelplane.client_wire import pack_directory

    folder = tmp_path / "saved"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "data").write_bytes(b"weights")
    first = pack_directory(folder, tmp_path).read_bytes()
    os.utime(folder / "saved_model.pb", (1, 1))  # touched, not changed
    (tmp_path / "again").mkdir()
    assert pack_directory(folder, tmp_path / "again").read_bytes() == first
    (folder / "variables" / "data").write_bytes(b"other weights")
    assert pack_directory(folder, tmp_path / "again").read_bytes() != first
