"""API keys, stored hashed. A key reads ``mpk_<id>_<secret>``; only sha256(secret) is kept."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelplane.domain import ApiKey, Principal, Role
from modelplane.errors import NotFound
from modelplane.registry.service import now
from modelplane.registry.tables import ApiKeyRow

PREFIX = "mpk_"
CACHE_SECONDS = 5.0


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(token: str) -> tuple[str, str] | None:
    if not token.startswith(PREFIX):
        return None
    key_id, sep, secret = token[len(PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


def _to_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(row.id, Role(row.role), row.name, row.created_at, row.revoked)


class KeyStore:
    """Creates, checks and revokes keys. Checks are cached for a few seconds so the hot path
    does not hit the database on every request; a revocation takes effect within that time."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def create(self, role: Role, name: str = "") -> tuple[ApiKey, str]:
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id=key_id,
            secret_hash=_hash(secret),
            role=role.value,
            name=name,
            created_at=now(),
            revoked=False,
        )
        with self._sessions.begin() as session:
            session.add(row)
        return _to_key(row), f"{PREFIX}{key_id}_{secret}"

    def authenticate(self, token: str) -> Principal | None:
        cached = self._cache.get(token)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        principal = self._check(token)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (time.monotonic() + CACHE_SECONDS, principal)
        return principal

    def _check(self, token: str) -> Principal | None:
        parts = _split(token)
        if parts is None:
            return None
        key_id, secret = parts
        with self._sessions() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or row.revoked:
                return None
            if not hmac.compare_digest(row.secret_hash, _hash(secret)):
                return None
            return Principal(key_id=row.id, role=Role(row.role), name=row.name)

    def list(self) -> list[ApiKey]:
        with self._sessions() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
            return [_to_key(r) for r in rows]

    def revoke(self, key_id: str) -> None:
        with self._sessions.begin() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}")
            row.revoked = True
        self._cache.clear()

    def count(self) -> int:
        with self._sessions() as session:
            return len(session.scalars(select(ApiKeyRow.id)).all())
