"""API keys, stored hashed. A key reads ``mpk_<id>_<secret>``; only sha256(secret) is kept.

Checks are cached for ``cache_s`` (5 s) so the hot path does not reach the database on every
request (keyed by the sha256 of the token, never the token; at most ``CACHE_ENTRIES``, the least
recently used forgotten first; a token too long or without the ``mpk_`` prefix is refused before
either): a revocation, an expiry or the end of a rotation's grace period takes effect within
that time on every route and on gRPC (a change made through this store clears the cache at
once). When a key was last used is noted in memory and written in one batch by
``flush_usage``, which the server calls every few seconds: never a write per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from modelplane.domain import ApiKey, Limits, Principal, Role
from modelplane.domain.auth import ALL_MODELS
from modelplane.errors import Conflict, InvalidInput, NotFound
from modelplane.registry.db import DATABASE_DOWN, database_unavailable
from modelplane.registry.service import now
from modelplane.registry.tables import ApiKeyRow
from modelplane.security.quotas import default_burst

PREFIX = "mpk_"
CACHE_SECONDS = 5.0
CACHE_ENTRIES = 10_000
MAX_TOKEN_CHARS = 200  # a key is ~60 characters; anything much longer is refused unread
USAGE_FLUSH_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What a key may do. ``models``: names or globs, None or empty for every model."""

    role: Role
    name: str = ""
    models: Sequence[str] | None = None
    expires_at: datetime | None = None
    quota: Quota | None = None


@dataclass(frozen=True, slots=True)
class Quota:
    """A key's limits as given (``keys create``/``update``): None leaves one as it is (unset
    at creation), 0 removes it. ``rate_limit`` is requests per second."""

    rate_limit: float | None = None
    burst: int | None = None
    max_concurrent: int | None = None
    daily: int | None = None
    daily_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A change to a key: None leaves a field as it is."""

    name: str | None = None
    role: Role | None = None
    models: Sequence[str] | None = None  # ["*"] for every model
    expires_at: datetime | None = None
    never_expires: bool = False
    quota: Quota | None = None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(token: str) -> tuple[str, str] | None:
    if not token.startswith(PREFIX):
        return None
    key_id, sep, secret = token[len(PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


def _aware(when: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def _models(raw: Sequence[str] | None) -> list[str] | None:
    if not raw:
        return None
    globs = [g.strip() for g in raw if g.strip()]
    if not globs or "*" in globs:
        return None
    for glob in globs:
        if len(glob) > 128 or any(c in glob for c in "/\\ "):
            raise InvalidInput(
                f"invalid model scope {glob!r}: give model names or globs, e.g. --models 'fraud-*'"
            )
    return sorted(set(globs))


def _set_quota(row: ApiKeyRow, quota: Quota) -> None:
    """Apply ``quota`` to the row (0 clears a limit), checked as a whole."""
    given = {"rate_limit": quota.rate_limit, "burst": quota.burst,
             "max_concurrent": quota.max_concurrent, "daily": quota.daily,
             "daily_tokens": quota.daily_tokens}  # fmt: skip
    for field, value in given.items():
        if value is None:
            continue
        whole = field == "rate_limit" or value == int(value)
        if not math.isfinite(value) or value < 0 or not whole:
            raise InvalidInput(
                f"invalid {field.replace('_', '-')} {value!r}: give a positive number (0 "
                "removes the limit), e.g. --rate-limit 50 --burst 100 --max-concurrent 8 "
                "--daily 100000"
            )
        setattr(row, field, (float(value) if field == "rate_limit" else int(value)) or None)
    if row.rate_limit is None and quota.burst is None:
        row.burst = None  # a rate removed takes its burst with it
    if row.burst is not None and row.rate_limit is None:
        raise InvalidInput("--burst needs a rate: e.g. --rate-limit 50 --burst 100")


def _limits(row: ApiKeyRow) -> Limits | None:
    """What the hot path enforces: None for a key without limits (it pays nothing)."""
    rate, concurrent, daily = row.rate_limit, row.max_concurrent, row.daily
    if rate is None and concurrent is None and daily is None and row.daily_tokens is None:
        return None
    burst = row.burst or (default_burst(rate) if rate is not None else 1)
    return Limits(rate, burst, concurrent, daily, row.daily_tokens)


def _to_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        role=Role(row.role),
        name=row.name,
        created_at=_aware(row.created_at) or row.created_at,
        revoked=row.revoked,
        models=tuple(row.models) if row.models else ALL_MODELS,
        expires_at=_aware(row.expires_at),
        last_used_at=_aware(row.last_used_at),
        rotated_at=_aware(row.rotated_at),
        previous_expires_at=_aware(row.previous_expires_at) if row.previous_hash else None,
        rate_limit=row.rate_limit,
        burst=row.burst,
        max_concurrent=row.max_concurrent,
        daily=row.daily,
        daily_tokens=row.daily_tokens,
    )


class KeyStore:
    """Creates, checks, rotates, changes and revokes keys."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime] = now,
        cache_s: float = CACHE_SECONDS,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._cache_s = cache_s
        # sha256(token) -> (valid until, principal): never the token itself; least recently
        # used first, so a full cache forgets the oldest entry, not every entry
        self._cache: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()  # gRPC and HTTP threads share the cache
        self._used: dict[str, float] = {}  # key id -> monotonic time of its last use

    # ---- the hot path -------------------------------------------------------------------------
    def authenticate(self, token: str) -> Principal | None:
        if len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX):
            return None  # no key: neither cached nor looked up
        moment = time.monotonic()
        cache = self._cache
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            cached = cache.get(digest)
            if cached is not None:
                cache.move_to_end(digest)
        if cached is None or cached[0] <= moment:
            try:
                principal, valid_s = self._check(token)
            except DATABASE_DOWN:
                if cached is None:
                    raise database_unavailable() from None
                # the database is away: the last answer stands for another period (nothing can
                # revoke a key meanwhile either), so the outage costs one try per period, not
                # one per request
                principal, valid_s = cached[1], self._cache_s
            cached = (moment + min(self._cache_s, valid_s), principal)
            with self._lock:
                cache[digest] = cached
                cache.move_to_end(digest)
                while len(cache) > self._cache_entries:
                    cache.popitem(last=False)
        if cached[1] is not None:
            self._used[cached[1].key_id] = moment
        return cached[1]

    def _forget(self) -> None:
        """Drop every cached check (after a change made here: it takes effect at once)."""
        with self._lock:
            self._cache.clear()

    def _check(self, token: str) -> tuple[Principal | None, float]:
        """The principal (None if the token is no valid key) and for how long it stays valid."""
        parts = _split(token)
        if parts is None:
            return None, self._cache_s
        key_id, secret = parts
        with self._sessions() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or row.revoked:
                return None, self._cache_s
            today = self._clock()
            valid_until = _aware(row.expires_at)
            hashed = _hash(secret)
            if not hmac.compare_digest(row.secret_hash, hashed):
                previous_until = _aware(row.previous_expires_at)
                if (
                    row.previous_hash is None
                    or previous_until is None
                    or not hmac.compare_digest(row.previous_hash, hashed)
                ):
                    return None, self._cache_s
                valid_until = min(valid_until or previous_until, previous_until)
            valid_s = self._cache_s
            if valid_until is not None:
                valid_s = (valid_until - today).total_seconds()
                if valid_s <= 0:
                    return None, self._cache_s
            models = tuple(row.models) if row.models else ALL_MODELS
            return Principal(row.id, Role(row.role), row.name, models, _limits(row)), valid_s

    def flush_usage(self) -> int:
        """Write when each key used since the last flush was last used (one batch); returns
        how many keys were written."""
        used, self._used = self._used, {}
        if not used:
            return 0
        offset = time.time() - time.monotonic()
        with self._sessions.begin() as session:
            for key_id, moment in used.items():
                when = datetime.fromtimestamp(moment + offset, UTC)
                session.execute(
                    update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_at=when)
                )
        return len(used)

    # ---- management ---------------------------------------------------------------------------
    def create(self, spec: KeySpec) -> tuple[ApiKey, str]:
        """A new key and its secret (shown once: only its hash is kept)."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id=key_id,
            secret_hash=_hash(secret),
            role=spec.role.value,
            name=spec.name,
            created_at=self._clock(),
            revoked=False,
            models=_models(spec.models),
            expires_at=spec.expires_at,
        )
        if spec.quota is not None:
            _set_quota(row, spec.quota)
        with self._sessions.begin() as session:
            session.add(row)
            key = _to_key(row)
        return key, f"{PREFIX}{key_id}_{secret}"

    def get(self, key_id: str) -> ApiKey:
        with self._sessions() as session:
            return _to_key(self._row(session, key_id))

    def list(self) -> list[ApiKey]:
        with self._sessions() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
            return [_to_key(r) for r in rows]

    def revoke(self, key_id: str) -> ApiKey:
        with self._sessions.begin() as session:
            row = self._row(session, key_id)
            self._keep_an_admin(session, row, "revoke")
            row.revoked = True
            key = _to_key(row)
        self._forget()
        return key

    def rotate(self, key_id: str, grace: timedelta = timedelta(0)) -> tuple[ApiKey, str]:
        """A new secret for the key; the old one keeps working for ``grace``."""
        if grace < timedelta(0):
            raise InvalidInput("the grace period cannot be negative; e.g. --grace 1h")
        secret = secrets.token_urlsafe(32)
        with self._sessions.begin() as session:
            row = self._row(session, key_id)
            if row.revoked:
                raise InvalidInput(f"API key {key_id!r} is revoked; create a new key instead")
            today = self._clock()
            row.previous_hash = row.secret_hash if grace > timedelta(0) else None
            row.previous_expires_at = today + grace if grace > timedelta(0) else None
            row.secret_hash = _hash(secret)
            row.rotated_at = today
            key = _to_key(row)
        self._forget()
        return key, f"{PREFIX}{key_id}_{secret}"

    def update(self, key_id: str, change: KeyChange) -> ApiKey:
        with self._sessions.begin() as session:
            row = self._row(session, key_id)
            if change.role not in (None, Role.ADMIN):
                self._keep_an_admin(session, row, "demote")
            if change.expires_at is not None and not change.never_expires:
                self._keep_an_admin(session, row, "set an expiry on")
            if change.models is not None and _models(change.models) is not None:
                self._keep_an_admin(session, row, "scope")
            if change.name is not None:
                row.name = change.name
            if change.role is not None:
                row.role = change.role.value
            if change.models is not None:
                row.models = _models(change.models)
            if change.never_expires:
                row.expires_at = None
            elif change.expires_at is not None:
                row.expires_at = change.expires_at
            if change.quota is not None:
                _set_quota(row, change.quota)
            key = _to_key(row)
        self._forget()
        return key

    def count(self) -> int:
        with self._sessions() as session:
            return len(session.scalars(select(ApiKeyRow.id)).all())

    def _active_admin(self, row: ApiKeyRow) -> bool:
        """An admin key that can manage keys: not revoked, not expired, without a model scope."""
        expires = _aware(row.expires_at)
        return (
            row.role == Role.ADMIN.value
            and not row.revoked
            and not row.models
            and (expires is None or expires > self._clock())
        )

    def _keep_an_admin(self, session: Session, row: ApiKeyRow, what: str) -> None:
        """Refuse a change that would leave no active unscoped admin key (no one could manage
        keys)."""
        if not self._active_admin(row):
            return
        admins = session.scalars(
            select(ApiKeyRow).where(ApiKeyRow.role == Role.ADMIN.value, ~ApiKeyRow.revoked)
        ).all()
        if not any(self._active_admin(r) for r in admins if r.id != row.id):
            raise Conflict(
                f"cannot {what} API key {row.id!r}: it is the last active admin key; create "
                "another admin key first (modelplane keys create --name NAME --role admin, "
                "with no --models: only an admin key without a model scope manages keys)"
            )

    @staticmethod
    def _row(session: Session, key_id: str) -> ApiKeyRow:
        row = session.get(ApiKeyRow, key_id)
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}; see `modelplane keys list`")
        return row


async def flush_usage_forever(keys: KeyStore, period_s: float = USAGE_FLUSH_SECONDS) -> None:
    """Write keys' last use every ``period_s`` until cancelled (then once more)."""
    try:
        while True:
            await asyncio.sleep(period_s)
            await asyncio.to_thread(keys.flush_usage)
    finally:
        keys.flush_usage()
