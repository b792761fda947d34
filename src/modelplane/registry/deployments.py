"""Deployments as desired state: what should serve, which version, how many replicas."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from modelplane.domain import Deployment, ModelRef, ModelVersion, ServingConfig
from modelplane.domain.model import name_problem
from modelplane.errors import InvalidInput, NotFound
from modelplane.registry.service import RegistryService, now, to_version
from modelplane.registry.tables import DeploymentRow, ModelRow, VersionRow

MAX_REPLICAS = 64


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    deployment: Deployment
    version: ModelVersion


def _record(row: DeploymentRow) -> DeploymentRecord:
    version = to_version(row.version)
    return DeploymentRecord(
        Deployment(
            name=row.name,
            model=version.model,
            version=version.version,
            replicas=row.replicas,
            created_at=row.created_at,
            updated_at=row.updated_at,
            config=ServingConfig.from_dict(row.config or {}),
        ),
        version,
    )


class DeploymentStore:
    def __init__(self, sessions: sessionmaker[Session], registry: RegistryService) -> None:
        self._sessions = sessions
        self._registry = registry

    def apply(
        self,
        ref: ModelRef,
        replicas: int,
        name: str | None = None,
        config: ServingConfig | None = None,
    ) -> DeploymentRecord:
        """Create or update the deployment ``name`` (default: the model's name). ``config``
        None keeps an existing deployment's serving configuration."""
        name = name or ref.name
        if problem := name_problem(name):
            raise InvalidInput(problem.replace("model name", "deployment name"))
        if not 0 <= replicas <= MAX_REPLICAS:
            raise InvalidInput(f"replicas must be between 0 and {MAX_REPLICAS}, got {replicas}")
        version = self._registry.resolve(ref)
        with self._sessions.begin() as session:
            version_id = session.scalars(
                select(VersionRow.id)
                .join(ModelRow)
                .where(ModelRow.name == version.model, VersionRow.version == version.version)
            ).one()
            row = session.scalar(select(DeploymentRow).where(DeploymentRow.name == name))
            stamp = now()
            if row is None:
                row = DeploymentRow(
                    name=name,
                    version_id=version_id,
                    replicas=replicas,
                    config=(config or ServingConfig()).to_dict(),
                    created_at=stamp,
                    updated_at=stamp,
                )
                session.add(row)
            else:
                row.version_id = version_id
                row.replicas = replicas
                row.updated_at = stamp
                if config is not None:
                    row.config = config.to_dict()
            session.flush()
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

    @staticmethod
    def _query() -> Select[DeploymentRow]:
        return select(DeploymentRow).options(
            selectinload(DeploymentRow.version)
            .selectinload(VersionRow.model)
            .selectinload(ModelRow.aliases)
        )

    def _load(self, session: Session, name: str) -> DeploymentRow:
        row = session.scalar(self._query().where(DeploymentRow.name == name))
        if row is None:
            raise NotFound(f"deployment {name!r} not found; create it with `modelplane deploy`")
        return row
