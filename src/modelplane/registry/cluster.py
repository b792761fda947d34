"""What the servers of one installation share through the database: who they are (each writes a
heartbeat), which one leads (a lease with a fencing token), and the routes the leader publishes
and what its controller saw, for every gateway and API.

The lease: one row, ``(holder, token, expires_at)``. A server takes it when it is free or has
expired, and renews it while it holds it; every change of holder increments the token. Times
are the servers' own clocks (``time.time``), so their clocks must agree to well within the
lease (NTP does). A leader acts only while its lease has more than a margin left (see
``scheduler/leader.py``), and routes are written only under the token that took the lease: a
leader that lost its lease can no longer publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelplane.registry.tables import DocumentRow, LeaseRow, ServerRow

CONTROLLER = "controller"
CONTROL = "control"  # the leader's routes and what its controller saw


@dataclass(frozen=True, slots=True)
class ServerInfo:
    id: str
    url: str
    started_at: float
    seen_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Lease:
    holder: str
    token: int
    acquired_at: float
    expires_at: float


def _lease(row: LeaseRow) -> Lease:
    return Lease(row.holder, row.token, row.acquired_at, row.expires_at)


class ClusterStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    # ---- servers ------------------------------------------------------------------------------
    def heartbeat(self, server: ServerInfo, now: float) -> None:
        with self._sessions.begin() as session:
            row = session.get(ServerRow, server.id)
            if row is None:
                session.add(ServerRow(id=server.id, url=server.url,
                                      started_at=server.started_at, seen_at=now))  # fmt: skip
            else:
                row.url, row.seen_at = server.url, now

    def servers(self, seen_since: float) -> list[ServerInfo]:
        """The servers whose last heartbeat is newer than ``seen_since``, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(ServerRow).where(ServerRow.seen_at >= seen_since)
                .order_by(ServerRow.started_at)
            ).all()  # fmt: skip
            return [ServerInfo(r.id, r.url, r.started_at, r.seen_at) for r in rows]

    def leave(self, server_id: str) -> None:
        """Remove the server and the documents named after it (its ``...:<id>`` ones)."""
        with self._sessions.begin() as session:
            session.execute(delete(ServerRow).where(ServerRow.id == server_id))
            session.execute(delete(DocumentRow).where(DocumentRow.name.endswith(f":{server_id}")))

    # ---- the lease ----------------------------------------------------------------------------
    def acquire(self, holder: str, ttl_s: float, now: float) -> Lease | None:
        """Take or renew the controller's lease for ``holder``; None when another holds it."""
        try:
            with self._sessions.begin() as session:
                row = session.scalar(
                    select(LeaseRow).where(LeaseRow.name == CONTROLLER).with_for_update()
                )
                if row is None:
                    row = LeaseRow(name=CONTROLLER, holder=holder, token=1, acquired_at=now,
                                   expires_at=now + ttl_s)  # fmt: skip
                    session.add(row)
                    session.flush()
                    return _lease(row)
                if row.holder != holder:
                    if row.expires_at > now:
                        return None
                    row.holder, row.token, row.acquired_at = holder, row.token + 1, now
                row.expires_at = now + ttl_s
                return _lease(row)
        except IntegrityError:
            return None  # another server made the row first

    def release(self, holder: str, now: float) -> None:
        """Give the lease up at once (a clean stop): another server takes it on its next try."""
        with self._sessions.begin() as session:
            row = session.get(LeaseRow, CONTROLLER, with_for_update=True)
            if row is not None and row.holder == holder:
                row.expires_at = now

    def lease(self) -> Lease | None:
        with self._sessions() as session:
            row = session.get(LeaseRow, CONTROLLER)
            return None if row is None else _lease(row)

    # ---- shared documents ---------------------------------------------------------------------
    def publish(self, name: str, doc: Any, holder: str, token: int) -> bool:
        """Write ``doc`` as ``name`` if ``holder`` still holds the lease taken with ``token``
        (the fence); whether it was written."""
        with self._sessions.begin() as session:
            lease = session.get(LeaseRow, CONTROLLER, with_for_update=True)
            if lease is None or lease.holder != holder or lease.token != token:
                return False
            row = session.get(DocumentRow, name)
            if row is None:
                session.add(DocumentRow(name=name, doc=doc, token=token))
            else:
                row.doc, row.token = doc, token
            return True

    def document(self, name: str) -> Any:
        with self._sessions() as session:
            row = session.get(DocumentRow, name)
            return None if row is None else row.doc

    def put(self, name: str, doc: Any) -> None:
        """Write a server's own document (no fence: only that server writes ``name``)."""
        with self._sessions.begin() as session:
            row = session.get(DocumentRow, name)
            if row is None:
                session.add(DocumentRow(name=name, doc=doc, token=0))
            else:
                row.doc = doc

    def documents(self, prefix: str) -> dict[str, Any]:
        """Every document whose name starts with ``prefix``, by name."""
        with self._sessions() as session:
            rows = session.scalars(select(DocumentRow).where(DocumentRow.name.startswith(prefix)))
            return {row.name: row.doc for row in rows}
