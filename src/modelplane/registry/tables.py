"""The metadata schema (SQLAlchemy 2). Changes go through an Alembic migration."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import DateTime


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(String, default="")
    next_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    versions: Mapped[list[VersionRow]] = relationship(
        back_populates="model", order_by="VersionRow.version"
    )
    aliases: Mapped[list[AliasRow]] = relationship(back_populates="model")


class VersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    source_format: Mapped[str] = mapped_column(String(32))
    signature: Mapped[dict[str, object]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(String, default="")
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    parent: Mapped[str | None] = mapped_column(String(128), nullable=True)
    source_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    report: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    # per-input statistics of the samples pushed with it (security/inputguard.py)
    input_stats: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    # the samples pushed with it (a blob): what optimize --auto calibrates and measures on
    samples_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)

    model: Mapped[ModelRow] = relationship(back_populates="versions")


class AliasRow(Base):
    __tablename__ = "model_aliases"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(63), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))

    model: Mapped[ModelRow] = relationship(back_populates="aliases")
    version: Mapped[VersionRow] = relationship()


class DeploymentRow(Base):
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    replicas: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # the last revision that served (a ready replica): served again while a newer one is not
    stable_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id"), nullable=True
    )
    stable_config: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    # a second version beside the current one, and its share of requests (traffic.Split)
    candidate_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id"), nullable=True
    )
    split: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    # the version served before the last promotion: what a rollback without a candidate restores
    previous_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id"), nullable=True
    )
    outcome: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)

    version: Mapped[VersionRow] = relationship(foreign_keys=[version_id])
    stable_version: Mapped[VersionRow | None] = relationship(foreign_keys=[stable_version_id])
    candidate_version: Mapped[VersionRow | None] = relationship(foreign_keys=[candidate_version_id])
    previous_version: Mapped[VersionRow | None] = relationship(foreign_keys=[previous_version_id])


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(default=False)
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # None: every model
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    previous_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    rate_limit: Mapped[float | None] = mapped_column(Float, nullable=True)
    burst: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    daily: Mapped[int | None] = mapped_column(Integer, nullable=True)
    daily_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ConversionRow(Base):
    __tablename__ = "conversions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(63))
    source_format: Mapped[str] = mapped_column(String(32))
    source_digest: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String, nullable=True)
    report: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class NodeCordonRow(Base):
    __tablename__ = "node_cordons"

    node: Mapped[str] = mapped_column(String(128), primary_key=True)
    drain: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str] = mapped_column(String(256), default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    """One audit entry. Append-only: the code inserts these and never updates or deletes one."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    key_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    source: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(500))
    result: Mapped[str] = mapped_column(String(100))
    detail: Mapped[str] = mapped_column(String(500), default="")


class ServerRow(Base):
    """A server of the installation and its last heartbeat (seconds since the epoch)."""

    __tablename__ = "servers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(512))
    started_at: Mapped[float] = mapped_column(Float)
    seen_at: Mapped[float] = mapped_column(Float)


class LeaseRow(Base):
    """Who runs the controller: the holder, until ``expires_at``; ``token`` grows with every
    change of holder (the fence)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    token: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class DocumentRow(Base):
    """A document shared through the database: the leader's (its routes and view, written under
    its lease: ``token``) or a server's own (its gateway's load, ``token`` 0)."""

    __tablename__ = "cluster_documents"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    doc: Mapped[object] = mapped_column(JSON)
    token: Mapped[int] = mapped_column(BigInteger)
