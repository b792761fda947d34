"""Deployments as desired state: what should serve, which version, how many replicas."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from modelplane.domain import (
    Autoscaling,
    Deployment,
    ModelRef,
    ModelVersion,
    PlacementPolicy,
    Resources,
    RolloutPolicy,
    ServingConfig,
    Split,
    SplitMode,
)
from modelplane.domain.model import name_problem
from modelplane.domain.resources import DEFAULT_REQUEST, generation_memory_mb
from modelplane.errors import Conflict, InvalidInput, NotFound
from modelplane.registry.service import RegistryService, now, to_version
from modelplane.registry.tables import DeploymentRow, ModelRow, VersionRow

MAX_REPLICAS = 64


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    deployment: Deployment
    version: ModelVersion
    # the last revision that served, where it is not this one: it serves until this one can
    stable: DeploymentRecord | None = None
    served: bool = False  # whether this revision is the last one that served
    # a second version beside this one (same settings) and its share of requests
    candidate: DeploymentRecord | None = None
    split: Split | None = None
    previous: str = ""  # NAME:VERSION served before the last promotion ("" when none)
    outcome: Mapping[str, Any] | None = None  # how the last canary or rollout ended

    def at(self, revision: str) -> DeploymentRecord:
        """The record of ``revision``: this one, its stable fallback or its candidate."""
        for record in (self.stable, self.candidate):
            if record is not None and record.deployment.revision == revision:
                return record
        return self


@dataclass(frozen=True, slots=True)
class Scheduling:
    """What a deploy says about resources, placement and autoscaling. None keeps what is set,
    a whole value replaces it, a mapping changes only the fields it names."""

    resources: Resources | Mapping[str, Any] | None = None
    placement: PlacementPolicy | Mapping[str, Any] | None = None
    autoscaling: Autoscaling | Mapping[str, Any] | None = None
    clear_autoscaling: bool = False
    reset: bool = False  # start from the defaults instead of what is set
    rollout: RolloutPolicy | None = None  # how later versions take over
    clear_rollout: bool = False  # later versions take over at once again


def missing_deployment(name: str) -> NotFound:
    """What a deployment that does not exist answers (and one outside a key's scope)."""
    return NotFound(f"deployment {name!r} not found; create it with `modelplane deploy`")


def _record(row: DeploymentRow) -> DeploymentRecord:
    current = _as_of(row, row.version, row.config, row.replicas)
    if row.candidate_version is not None and row.split is not None:
        candidate = _as_of(row, row.candidate_version, row.config, 1)
        current = replace(current, candidate=candidate, split=Split.from_dict(row.split))
    if row.previous_version is not None:
        previous = to_version(row.previous_version)
        current = replace(current, previous=previous.ref)
    if row.outcome:
        current = replace(current, outcome=dict(row.outcome))
    if row.stable_version is None or row.stable_config is None:
        return current
    stable = _as_of(row, row.stable_version, row.stable_config, 1)
    if stable.deployment.revision == current.deployment.revision:
        return replace(current, served=True)
    return replace(current, stable=stable)


def _as_of(
    row: DeploymentRow, version_row: VersionRow, config: Mapping[str, Any] | None, replicas: int
) -> DeploymentRecord:
    version = to_version(version_row)
    spec: dict[str, Any] = dict(config or {})
    scaling = spec.get("autoscaling")
    rollout = spec.get("rollout")
    return DeploymentRecord(
        Deployment(
            name=row.name,
            model=version.model,
            version=version.version,
            replicas=replicas,
            created_at=row.created_at,
            updated_at=row.updated_at,
            config=ServingConfig.from_dict(spec),
            resources=Resources.from_dict(spec.get("resources") or {}, DEFAULT_REQUEST),
            placement=PlacementPolicy.from_dict(spec.get("placement") or {}),
            autoscaling=None if not scaling else Autoscaling.from_dict(scaling),
            rollout=None if not rollout else RolloutPolicy.from_dict(rollout),
        ),
        version,
    )


def _check(resources: Resources, scaling: Autoscaling | None) -> None:
    if resources.cpu <= 0 or resources.memory_mb <= 0 or resources.gpus < 0:
        raise InvalidInput(
            f"a replica must ask for some CPU and memory (got {resources.describe()}); "
            "for example --cpu 0.5 --memory 512"
        )
    if scaling is None:
        return
    if not 0 <= scaling.min_replicas <= scaling.max_replicas <= MAX_REPLICAS:
        raise InvalidInput(
            f"autoscaling needs 0 <= min <= max <= {MAX_REPLICAS}, "
            f"got min {scaling.min_replicas} and max {scaling.max_replicas}"
        )
    if scaling.target_ongoing_requests <= 0:
        raise InvalidInput("target_ongoing_requests must be above 0")
    if min(scaling.upscale_delay_s, scaling.downscale_delay_s) < 0:
        raise InvalidInput("upscale and downscale delays cannot be negative")


class DeploymentStore:
    def __init__(self, sessions: sessionmaker[Session], registry: RegistryService) -> None:
        self._sessions = sessions
        self._registry = registry

    def apply(
        self,
        ref: ModelRef,
        replicas: int | None = None,
        name: str | None = None,
        config: ServingConfig | Mapping[str, Any] | None = None,
        scheduling: Scheduling | None = None,
        split: Split | None = None,
    ) -> DeploymentRecord:
        """Create or update the deployment ``name`` (default: the model's name). What is not
        given keeps its current value (``replicas`` None: the current count, 1 when new);
        ``config`` and the scheduling settings change field by field when given as mappings.
        With ``split`` the version runs beside the current one as its candidate (a canary or
        shadow); without, a new version of a deployment with a rollout policy starts a
        rollout, and otherwise replaces the current one."""
        name = name or ref.name
        if problem := name_problem(name):
            raise InvalidInput(problem.replace("model name", "deployment name"))
        if replicas is not None and not 0 <= replicas <= MAX_REPLICAS:
            raise InvalidInput(f"replicas must be between 0 and {MAX_REPLICAS}, got {replicas}")
        version = self._registry.resolve(ref)
        with self._sessions.begin() as session:
            version_id = session.scalars(
                select(VersionRow.id)
                .join(ModelRow)
                .where(ModelRow.name == version.model, VersionRow.version == version.version)
            ).one()
            row = session.scalar(self._query().where(DeploymentRow.name == name))
            stamp = now()
            before = _record(row).deployment if row is not None else None
            given = scheduling or Scheduling()
            spec = _sized(_merge(before, config, given, replicas), version, given)
            _check(spec.resources, spec.autoscaling)
            replicas = _replicas(replicas, before, spec, given)
            if row is not None:
                version_id = _staged(row, version_id, version.ref, split, spec.rollout)
            elif split is not None:
                raise NotFound(
                    f"deployment {name!r} does not exist yet: a canary or shadow runs beside a "
                    f"current version; deploy one first (`modelplane deploy {ref.name}:VERSION"
                    + (f" --name {name}" if name != ref.name else "")
                    + "`)"
                )
            if row is None:
                row = DeploymentRow(
                    name=name,
                    version_id=version_id,
                    replicas=replicas,
                    config=spec.to_spec(),
                    created_at=stamp,
                    updated_at=stamp,
                )
                session.add(row)
            else:
                row.version_id = version_id
                row.replicas = replicas
                row.updated_at = stamp
                row.config = spec.to_spec()
            session.flush()
            # the rows of the new ids, not the ones loaded
            session.expire(row, ["version", "candidate_version", "previous_version"])
            return _record(self._load(session, name))

    def list(self) -> list[DeploymentRecord]:
        with self._sessions() as session:
            rows = session.scalars(self._query().order_by(DeploymentRow.name)).all()
            return [_record(r) for r in rows]

    def get(self, name: str) -> DeploymentRecord:
        with self._sessions() as session:
            return _record(self._load(session, name))

    def delete(self, name: str) -> None:
        with self._sessions.begin() as session:
            session.delete(self._load(session, name))

    def set_split(self, name: str, candidate: int, split: Split) -> bool:
        """Move a rollout to ``split`` if the deployment's candidate is still version
        ``candidate`` (a person may have promoted or rolled back meanwhile)."""
        with self._sessions.begin() as session:
            row = session.scalar(self._query().where(DeploymentRow.name == name))
            if row is None or not _candidate_is(row, candidate):
                return False
            row.split = split.to_dict()
            return True

    def promote(self, name: str, reason: str, candidate: int | None = None) -> DeploymentRecord:
        """The candidate becomes the current version, for every request at once; the version
        it replaces is kept as the one a rollback returns to. ``candidate``: only if it is
        still this version (else Conflict)."""
        with self._sessions.begin() as session:
            row = self._load(session, name)
            if row.candidate_version is None:
                raise Conflict(
                    f"deployment {name!r} has no canary or shadow to promote; start one with "
                    f"`modelplane deploy {name}:VERSION --canary 10` (or --shadow)"
                )
            if candidate is not None and not _candidate_is(row, candidate):
                raise Conflict(f"deployment {name!r}'s candidate changed meanwhile")
            promoted = to_version(row.candidate_version).ref
            row.previous_version_id, row.version_id = row.version_id, row.candidate_version.id
            _end(row, promoted, "promoted", reason)
            session.flush()
            session.expire(row, ["version", "candidate_version", "previous_version"])
            return _record(self._load(session, name))

    def rollback(self, name: str, reason: str, candidate: int | None = None) -> DeploymentRecord:
        """Send every request back to the current version and stop the candidate; with no
        candidate, return to the version served before the last promotion."""
        with self._sessions.begin() as session:
            row = self._load(session, name)
            if row.candidate_version is not None:
                if candidate is not None and not _candidate_is(row, candidate):
                    raise Conflict(f"deployment {name!r}'s candidate changed meanwhile")
                _end(row, to_version(row.candidate_version).ref, "rolled back", reason)
            elif row.previous_version is not None and candidate is None:
                left = to_version(row.version).ref
                row.version_id, row.previous_version_id = row.previous_version.id, None
                _end(row, left, "rolled back", reason)
            else:
                raise Conflict(
                    f"deployment {name!r} has nothing to roll back to: no canary, shadow or "
                    "earlier promoted version; deploy the version you want with "
                    f"`modelplane deploy {name}:VERSION`"
                )
            session.flush()
            session.expire(row, ["version", "candidate_version", "previous_version"])
            return _record(self._load(session, name))

    def mark_stable(self, name: str, revision: str) -> bool:
        """Record that the deployment's current revision served (a replica of it was ready),
        if ``revision`` is still the current one; whether it was recorded."""
        with self._sessions.begin() as session:
            row = session.scalar(self._query().where(DeploymentRow.name == name))
            if row is None or _record(row).deployment.revision != revision:
                return False
            row.stable_version_id = row.version_id
            row.stable_config = dict(row.config or {})
            return True

    @staticmethod
    def _query() -> Select[DeploymentRow]:
        versions = (DeploymentRow.version, DeploymentRow.stable_version,
                    DeploymentRow.candidate_version, DeploymentRow.previous_version)  # fmt: skip
        loads = [
            selectinload(v).selectinload(VersionRow.model).selectinload(ModelRow.aliases)
            for v in versions
        ]
        return select(DeploymentRow).options(*loads)

    def _load(self, session: Session, name: str) -> DeploymentRow:
        row = session.scalar(self._query().where(DeploymentRow.name == name))
        if row is None:
            raise missing_deployment(name)
        return row


def _candidate_is(row: DeploymentRow, version: int) -> bool:
    return row.candidate_version is not None and row.candidate_version.version == version


def _end(row: DeploymentRow, ref: str, result: str, reason: str) -> None:
    """The candidate's run is over (promoted or rolled back): say how, once."""
    row.candidate_version_id, row.split = None, None
    row.outcome = {"version": ref, "result": result, "reason": reason, "at": now().isoformat()}
    row.updated_at = now()


def _staged(
    row: DeploymentRow, version_id: int, ref: str, split: Split | None, policy: RolloutPolicy | None
) -> int:
    """The version the deployment serves after this deploy; a canary, a shadow or a rollout
    puts the new one beside it as the candidate instead."""
    current = to_version(row.version).ref
    if split is not None:
        if version_id == row.version_id:
            raise InvalidInput(
                f"{ref} is what {row.name!r} serves already; a canary or shadow is another version"
            )
        row.candidate_version_id, row.split = version_id, split.to_dict()
        return row.version_id
    if version_id == row.version_id:
        return version_id
    if row.candidate_version is not None:
        candidate = to_version(row.candidate_version).ref
        raise Conflict(
            f"deployment {row.name!r} serves {current} with {candidate} beside it; promote "
            f"(`modelplane promote {row.name}`) or roll back (`modelplane rollback {row.name}`) "
            "before deploying another version"
        )
    if policy is not None and row.stable_version_id is not None:
        row.candidate_version_id = version_id
        row.split = Split(SplitMode.ROLLOUT, policy.steps[0]).to_dict()
        return row.version_id
    row.previous_version_id = row.version_id  # what `modelplane rollback` returns to
    return version_id


Setting = TypeVar("Setting", ServingConfig, Resources, PlacementPolicy, Autoscaling)


def _changed(current: Setting, change: Setting | Mapping[str, Any] | None) -> Setting:
    if change is None:
        return current
    if isinstance(change, Mapping):
        return type(current).from_dict({**current.to_dict(), **change})
    return change


def _merge(
    before: Deployment | None,
    config: ServingConfig | Mapping[str, Any] | None,
    given: Scheduling,
    replicas: int | None,
) -> Deployment:
    """The deployment settings after a deploy: what was given over what was there."""
    if given.clear_autoscaling and given.autoscaling is not None:
        raise InvalidInput("autoscaling_off and autoscaling contradict each other: give one")
    stamp = now()
    base = Deployment("", "", 1, 0, stamp, stamp)
    if before is not None and not given.reset:
        base = before
    if given.clear_rollout and given.rollout is not None:
        raise InvalidInput("rollout_off and rollout contradict each other: give one")
    rollout = None if given.clear_rollout else given.rollout or base.rollout
    scaling = None if given.clear_autoscaling else base.autoscaling
    if given.autoscaling is not None:
        named = given.autoscaling if isinstance(given.autoscaling, Mapping) else {}
        turned_on = scaling is None
        scaling = _changed(scaling or Autoscaling(), given.autoscaling)
        if named and "max_replicas" not in named:
            # "at least N" on its own raises the bound above it too; turned on, it also keeps
            # the replica count asked for (or had) within reach, as --replicas is the start
            top = scaling.min_replicas
            if turned_on:
                top = max(top, replicas if replicas is not None else base.replicas)
            scaling = replace(scaling, max_replicas=max(scaling.max_replicas, top, 1))
    return Deployment(
        "", "", base.replicas, 0, stamp, stamp,
        config=_changed(base.config, config),
        resources=_changed(base.resources, given.resources),
        placement=_changed(base.placement, given.placement),
        autoscaling=scaling,
        rollout=rollout,
    )  # fmt: skip


def _sized(spec: Deployment, version: ModelVersion, given: Scheduling) -> Deployment:
    """A language model's replica reserves what its weights and KV cache need (at least), unless
    this deploy names the memory itself."""
    named = given.resources if isinstance(given.resources, Mapping) else {}
    if isinstance(given.resources, Resources) or "memory_mb" in named:
        return spec
    need = generation_memory_mb(version.report, spec.config.max_batch_size)
    if need is None or need <= spec.resources.memory_mb:
        return spec
    return replace(spec, resources=replace(spec.resources, memory_mb=need))


def _replicas(
    asked: int | None, before: Deployment | None, spec: Deployment, given: Scheduling
) -> int:
    """Replicas not given: a new (or reset) deployment starts with 1, or its autoscaling
    minimum; an existing one keeps its count (at least 1 when its autoscaling is turned off).
    Autoscaling bounds the count."""
    scaling = spec.autoscaling
    if asked is None:
        if before is None or given.reset:
            asked = scaling.min_replicas if scaling is not None else 1
        elif before.autoscaling is not None and scaling is None:
            asked = max(1, before.replicas)
        else:
            asked = before.replicas
    if scaling is not None:
        asked = max(scaling.min_replicas, min(asked, scaling.max_replicas))
    return asked
