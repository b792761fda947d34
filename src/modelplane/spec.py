"""The platform as a file (``modelplane apply -f``, ``modelplane export``): models with their
source files, aliases, deployments with all their settings, and keys by name and role (never a
secret). Validated with the field's path in every error; its JSON Schema ships beside this
module (``platform.schema.json``) for editors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelplane.deployment_schema import (
    AutoscalingIn,
    PlacementIn,
    ResourcesIn,
    RolloutIn,
    ServingConfigIn,
)
from modelplane.errors import InvalidInput

SCHEMA_FILE = Path(__file__).with_name("platform.schema.json")
ROLES = ("admin", "operator", "publisher", "invoker", "viewer")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """A model version: pushed from ``source`` (a file or folder, relative to the spec file;
    skipped when a version of the model already has its bytes), or an existing ``version``
    (what ``export`` writes). ``aliases`` point at that version."""

    name: str = Field(min_length=1, max_length=63)
    source: str | None = Field(None, description="file or folder to push")
    version: int | None = Field(None, ge=1, description="an existing version")
    format: str = Field("auto", description="auto, onnx, sklearn, torch, keras, ...")
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    trust_pickle: bool = Field(False, description="allow pickles (scikit-learn, joblib)")
    tolerance: float | None = Field(None, gt=0, description="parity tolerance")
    precision: Literal["fp32", "int8", "int4"] | None = None
    aliases: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_origin(self) -> ModelSpec:
        if (self.source is None) == (self.version is None):
            raise ValueError("give either source (a file to push) or version (an existing one)")
        return self


class DeploymentSpec(_Strict):
    """A deployment: settings it names are applied; settings it leaves out keep theirs."""

    name: str = Field(min_length=1, max_length=63)
    model: str = Field(description="NAME:VERSION, NAME@ALIAS or NAME (its latest version)")
    replicas: int | None = Field(None, ge=0, le=64)
    config: ServingConfigIn | None = None
    resources: ResourcesIn | None = None
    placement: PlacementIn | None = None
    autoscaling: AutoscalingIn | None = None
    rollout: RolloutIn | None = None


class KeySpec(_Strict):
    """An API key by name (its secret is printed once when apply creates it, never stored)."""

    name: str = Field(min_length=1, max_length=128)
    role: Literal["admin", "operator", "publisher", "invoker", "viewer"]
    models: list[str] | None = Field(None, description="model name globs; omitted: every model")
    rate_limit: float | None = Field(None, gt=0)
    burst: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    daily: int | None = Field(None, ge=1)
    daily_tokens: int | None = Field(None, ge=1)


class PlatformSpec(_Strict):
    """What ``modelplane apply -f`` builds and ``modelplane export`` writes."""

    models: list[ModelSpec] = Field(default_factory=list)
    deployments: list[DeploymentSpec] = Field(default_factory=list)
    keys: list[KeySpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> PlatformSpec:
        for what, names in (("deployment", [d.name for d in self.deployments]),
                            ("key", [k.name for k in self.keys])):  # fmt: skip
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{what} names must be unique; given twice: {', '.join(twice)}")
        return self


def _where(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(the file)"


def parse(text: str, source: str = "the spec") -> PlatformSpec:
    """The spec in ``text`` (YAML or JSON); InvalidInput listing each problem with the path of
    its field (``deployments[1].replicas: ...``)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source} is not valid YAML: {exc}") from None
    if doc is None:
        doc = {}
    try:
        return PlatformSpec.model_validate(doc)
    except ValidationError as exc:
        problems = [f"{_where(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors()]  # fmt: skip
        raise InvalidInput(f"{source} has {len(problems)} problem(s):\n  " +
                           "\n  ".join(problems)) from None  # fmt: skip


def dump(spec: PlatformSpec) -> str:
    """The spec as YAML, fields in their declared order: a model's without its defaults, a
    deployment's and a key's whole (empty ones left out)."""
    doc = {
        "models": [m.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
                   for m in spec.models],
        "deployments": [d.model_dump(mode="json", exclude_none=True) for d in spec.deployments],
        "keys": [k.model_dump(mode="json", exclude_none=True) for k in spec.keys],
    }  # fmt: skip
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def schema() -> dict[str, Any]:
    doc = PlatformSpec.model_json_schema()
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "modelplane platform spec"
    return doc


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"
