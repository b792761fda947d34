"""Node maintenance as desired state: which nodes take no new replicas, and which are drained."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelplane.errors import InvalidInput, NotFound
from modelplane.registry.service import now
from modelplane.registry.tables import NodeCordonRow

MAX_REASON = 256


@dataclass(frozen=True, slots=True)
class Cordon:
    node: str
    drain: bool
    reason: str
    created_by: str


class NodeStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def cordon(self, node: str, *, drain: bool, reason: str, by: str) -> Cordon:
        """Take ``node`` out of placement; with ``drain``, also move its replicas elsewhere."""
        if not node or len(node) > 128:
            raise InvalidInput("a node id is 1-128 characters; see `modelplane nodes list`")
        if len(reason) > MAX_REASON:
            raise InvalidInput(f"the reason is at most {MAX_REASON} characters")
        with self._sessions.begin() as session:
            row = session.get(NodeCordonRow, node)
            if row is None:
                row = NodeCordonRow(node=node, created_at=now())
                session.add(row)
            row.drain, row.reason, row.created_by = drain, reason, by
            return Cordon(node, drain, reason, by)

    def uncordon(self, node: str) -> None:
        with self._sessions.begin() as session:
            row = session.get(NodeCordonRow, node)
            if row is None:
                raise NotFound(f"node {node!r} is not cordoned")
            session.delete(row)

    def all(self) -> dict[str, Cordon]:
        with self._sessions() as session:
            rows = session.scalars(select(NodeCordonRow)).all()
            return {r.node: Cordon(r.node, r.drain, r.reason, r.created_by) for r in rows}
