"""The audit trail's table: entries are appended and read, never changed or removed. This
module has no update or delete path on purpose (a test checks it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from modelplane.registry.tables import AuditRow
from modelplane.telemetry.audit import AuditEntry

MAX_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class AuditQuery:
    since: datetime | None = None
    key_id: str | None = None
    action: str | None = None
    after_id: int | None = None  # for following: only entries newer than this one
    limit: int = 100  # the newest ``limit`` entries that match, oldest first


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    entry: AuditEntry


def _aware(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


class AuditLog:
    """Appends audit entries and answers queries (the ``AuditSink`` of the ``AuditTrail``)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def append(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        rows = [
            {
                "at": e.at, "action": e.action, "key_id": e.key_id, "key_name": e.key_name,
                "source": e.source, "target": e.target, "result": e.result, "detail": e.detail,
            }
            for e in entries
        ]  # fmt: skip
        with self._sessions.begin() as session:
            session.execute(insert(AuditRow), rows)

    def query(self, query: AuditQuery) -> list[AuditRecord]:
        limit = max(1, min(query.limit, MAX_LIMIT))
        stmt = select(AuditRow)
        if query.since is not None:
            stmt = stmt.where(AuditRow.at >= query.since)
        if query.key_id:
            stmt = stmt.where(AuditRow.key_id == query.key_id)
        if query.action:
            stmt = stmt.where(AuditRow.action == query.action)
        if query.after_id is not None:
            stmt = stmt.where(AuditRow.id > query.after_id).order_by(AuditRow.id).limit(limit)
        else:
            stmt = stmt.order_by(AuditRow.id.desc()).limit(limit)
        with self._sessions() as session:
            rows = list(session.scalars(stmt).all())
        rows.sort(key=lambda r: r.id)
        return [
            AuditRecord(
                r.id,
                AuditEntry(
                    _aware(r.at), r.action, r.key_id, r.key_name, r.source, r.target, r.result,
                    r.detail,
                ),
            )
            for r in rows
        ]  # fmt: skip
