"""A platform spec against a running server: the changes that would make the server match it
(what ``apply --dry-run`` prints), carrying them out in order, and the spec of what the server
has now (``export``). Everything goes through the HTTP API, as any client would."""

from __future__ import annotations

import functools
import hashlib
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelplane import errors
from modelplane.client import Client
from modelplane.client_wire import pack_directory
from modelplane.domain import ModelRef
from modelplane.spec import (
    DeploymentSpec,
    KeySpec,
    ModelSpec,
    PlatformSpec,
)

SECTIONS = ("config", "resources", "placement", "autoscaling", "rollout")
LIMITS = ("rate_limit", "burst", "max_concurrent", "daily", "daily_tokens")


@dataclass
class Change:
    """One step toward the spec: ``+`` creates, ``~`` changes; ``run`` carries it out and says
    what it did (a created key's secret, shown once)."""

    sign: str
    what: str
    detail: str
    run: Callable[[], str]

    def line(self) -> str:
        return (
            f"{self.sign} {self.what}: {self.detail}" if self.detail else f"{self.sign} {self.what}"
        )


def _digest(path: Path) -> str:
    """sha256 of what a push sends: the file, or a folder packed as the client packs it."""
    if path.is_dir():
        with tempfile.TemporaryDirectory() as scratch:
            return _digest(pack_directory(path, Path(scratch)))
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _every_model(models: list[str] | None) -> list[str]:
    return ["*"] if not models or "*" in models else sorted(set(models))


@dataclass
class _Model:
    """What the server has of one model: versions by digest, aliases, latest version."""

    versions: set[int] = field(default_factory=set)
    by_digest: dict[str, int] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    latest: int | None = None


class Planner:
    def __init__(self, client: Client, spec: PlatformSpec, base: Path) -> None:
        self._client = client
        self._spec = spec
        self._base = base
        self._models: dict[str, _Model] = {}
        # what an alias or a deployment resolves to once applied: a version number, or the
        # spec index of a model entry whose push is planned
        self._target: dict[int, int | None] = {}
        self._pushed: dict[int, int] = {}  # spec index -> version number, once pushed

    # ---- reading the server ---------------------------------------------------------------
    def _model(self, name: str) -> _Model:
        if name not in self._models:
            found = _Model()
            try:
                detail = self._client.model(name)
            except errors.NotFound:
                detail = None
            if detail is not None:
                for v in detail["versions"]:
                    found.versions.add(v["version"])
                    for digest in (v["digest"], v.get("source_digest")):
                        if digest:
                            found.by_digest[digest.removeprefix("sha256:")] = v["version"]
                found.aliases = dict(detail["aliases"])
                found.latest = detail["latest_version"]
            self._models[name] = found
        return self._models[name]

    # ---- the plan ---------------------------------------------------------------------------
    def plan(self) -> list[Change]:
        changes: list[Change] = []
        for i, model in enumerate(self._spec.models):
            changes += self._model_changes(i, model)
        current: dict[str, Mapping[str, Any]] = {d["name"]: d for d in self._client.deployments()}
        for deployment in self._spec.deployments:
            changes += self._deployment_changes(deployment, current.get(deployment.name))
        listed: list[Mapping[str, Any]] = list(self._client.keys())
        keys = [k for k in listed if k.get("state") == "active"]
        for key in self._spec.keys:
            changes += self._key_changes(key, [k for k in keys if k["name"] == key.name])
        return changes

    def _model_changes(self, i: int, m: ModelSpec) -> list[Change]:
        have = self._model(m.name)
        changes = []
        where = f"models[{i}]"
        if m.source is not None:
            path = (self._base / m.source).resolve()
            if not path.exists():
                raise errors.InvalidInput(f"{where}.source: {m.source} does not exist "
                                          f"(paths are relative to the spec file)")  # fmt: skip
            version = have.by_digest.get(_digest(path))
            self._target[i] = version
            if version is None:
                changes.append(Change("+", f"push model {m.name}", f"from {m.source}",
                                      lambda: self._push(i, m, path)))  # fmt: skip
        else:
            if m.version not in have.versions:
                raise errors.InvalidInput(
                    f"{where}: {m.name}:{m.version} does not exist on this server; give "
                    "source (a file to push) instead of version"
                )
            self._target[i] = m.version
        for alias in m.aliases:
            target = self._target[i]
            if target is not None and have.aliases.get(alias) == target:
                continue
            was = have.aliases.get(alias)
            to = (
                f"version {target}" if target is not None else f"the version pushed from {m.source}"
            )
            detail = f"{'version ' + str(was) if was else 'new'} -> {to}"
            run = functools.partial(self._alias, i, m, alias)
            changes.append(Change("~", f"alias {m.name}@{alias}", detail, run))
        return changes

    def _version_of(self, i: int) -> int:
        target = self._target.get(i)
        return target if target is not None else self._pushed[i]

    def _push(self, i: int, m: ModelSpec, path: Path) -> str:
        version = self._client.push(
            path, m.name, format=m.format, description=m.description, tags=m.tags,
            trust_pickle=m.trust_pickle, tolerance=m.tolerance, precision=m.precision,
        )  # fmt: skip
        self._pushed[i] = version["version"]
        return f"pushed {version['ref']}"

    def _alias(self, i: int, m: ModelSpec, alias: str) -> str:
        version = self._version_of(i)
        self._client.set_alias(m.name, version, alias)
        return f"{m.name}@{alias} -> {m.name}:{version}"

    def _wanted_version(self, ref: ModelRef) -> int | None:
        """The version a deployment's model reference names once the spec is applied (None:
        a version this apply pushes)."""
        if ref.version is not None:
            return ref.version
        entries = [i for i, m in enumerate(self._spec.models) if m.name == ref.name]
        if ref.alias is not None:
            for i in entries:
                if ref.alias in self._spec.models[i].aliases:
                    return self._target.get(i)
            return self._model(ref.name).aliases.get(ref.alias)
        if any(self._target.get(i) is None for i in entries):
            return None  # a push makes the latest version
        return self._model(ref.name).latest

    def _deployment_changes(self, d: DeploymentSpec, now: Mapping[str, Any] | None) -> list[Change]:
        try:
            ref = ModelRef.parse(d.model)
        except ValueError as exc:
            raise errors.InvalidInput(f"deployments: {d.name}: model: {exc}") from None
        named = d.model_dump(exclude_unset=True, mode="json")

        def deploy() -> str:
            body = {k: named[k] for k in (*SECTIONS, "replicas") if k in named}
            info = self._client.deploy(d.model, name=d.name, wait=False, **body)
            return f"deployment {d.name}: {info['ref']}"

        if now is None:
            return [Change("+", f"deployment {d.name}", d.model, deploy)]
        diffs = []
        wanted = self._wanted_version(ref)
        if wanted is None or wanted != now["version"]:
            to = f"{ref.name}:{wanted}" if wanted is not None else f"{d.model} (pushed now)"
            diffs.append(f"model {now['ref']} -> {to}")
        autoscaled = "autoscaling" in named or now.get("autoscaling")
        if "replicas" in named and not autoscaled and named["replicas"] != now["desired_replicas"]:
            diffs.append(f"replicas {now['desired_replicas']} -> {named['replicas']}")
        for section in SECTIONS:
            if section not in named:
                continue
            have = now.get(section) or {}
            for key, value in named[section].items():
                if have.get(key) != value:
                    diffs.append(f"{section}.{key} {have.get(key)!r} -> {value!r}")
        if not diffs:
            return []
        return [Change("~", f"deployment {d.name}", "; ".join(diffs), deploy)]

    def _key_changes(self, k: KeySpec, same: list[Mapping[str, Any]]) -> list[Change]:
        limits = {name: getattr(k, name) for name in LIMITS if getattr(k, name) is not None}

        def create() -> str:
            made = self._client.create_key(k.name, k.role, models=k.models, **limits)
            return f"key {k.name} created: {made['secret']} (shown once: store it now)"

        if not same:
            return [Change("+", f"key {k.name}", k.role, create)]
        key = same[0]
        diffs = []
        if key["role"] != k.role:
            diffs.append(f"role {key['role']} -> {k.role}")
        if _every_model(key.get("models")) != _every_model(k.models):
            diffs.append(f"models {_every_model(key.get('models'))} -> {_every_model(k.models)}")
        for name, value in limits.items():
            if key.get(name) != value:
                diffs.append(f"{name} {key.get(name)} -> {value}")
        if not diffs:
            return []
        if len(same) > 1:
            raise errors.InvalidInput(
                f"keys: {len(same)} active keys are named {k.name!r}; give them distinct names "
                "(`modelplane keys update ID --name ...`) before applying a change to one"
            )

        def update() -> str:
            self._client.update_key(key["id"], role=k.role, models=k.models or ["*"], **limits)
            return f"key {k.name} updated"

        return [Change("~", f"key {k.name}", "; ".join(diffs), update)]


def export(client: Client) -> PlatformSpec:
    """The server's state as a spec: each model version an alias or a deployment uses (with
    its aliases), every deployment with all its settings, every active key (no secret)."""
    deployments: list[Mapping[str, Any]] = list(client.deployments())
    used: dict[str, set[int]] = {}
    for d in deployments:
        used.setdefault(d["model"], set()).add(d["version"])
    models = []
    for summary in client.models():
        aliases = summary["aliases"]
        versions = used.get(summary["name"], set()) | set(aliases.values())
        for version in sorted(versions):
            named = sorted(a for a, v in aliases.items() if v == version)
            models.append(ModelSpec(name=summary["name"], version=version, aliases=named))
    keys: list[Mapping[str, Any]] = list(client.keys())
    return PlatformSpec(
        models=models,
        deployments=[_deployment_spec(d) for d in deployments],
        keys=[_key_spec(k) for k in keys if k.get("state") == "active"],
    )


def _deployment_spec(d: Mapping[str, Any]) -> DeploymentSpec:
    fields: dict[str, Any] = {"name": d["name"], "model": d["ref"]}
    for section in SECTIONS:
        if d.get(section):
            fields[section] = d[section]
    if not d.get("autoscaling"):
        fields["replicas"] = d["desired_replicas"]
    return DeploymentSpec.model_validate(fields)


def _key_spec(key: Mapping[str, Any]) -> KeySpec:
    fields: dict[str, Any] = {"name": key["name"], "role": key["role"]}
    if _every_model(key.get("models")) != ["*"]:
        fields["models"] = key["models"]
    fields |= {n: key[n] for n in LIMITS if key.get(n) is not None}
    return KeySpec.model_validate(fields)
