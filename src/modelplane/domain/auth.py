"""Who is calling and what they may do."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

ALL_MODELS: tuple[str, ...] = ("*",)


class Role(enum.StrEnum):
    """Fixed sets of actions (``modelplane.security.policy.ALLOWED`` says which)."""

    ADMIN = "admin"
    OPERATOR = "operator"
    PUBLISHER = "publisher"
    INVOKER = "invoker"
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's quotas (``modelplane.security.quotas``): ``rate`` requests per second with
    ``burst`` at once, ``max_concurrent`` in flight, ``daily`` per UTC day, ``daily_tokens``
    language-model tokens (prompt and completion) per UTC day; None is no limit."""

    rate: float | None = None
    burst: int = 1
    max_concurrent: int | None = None
    daily: int | None = None
    daily_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``models`` are the names or globs (``fraud-*``) its key may
    see; ``("*",)`` is every model. ``limits`` is None for a key without quotas."""

    key_id: str
    role: Role
    name: str
    models: tuple[str, ...] = ALL_MODELS
    limits: Limits | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listed: never its secret. The limits (``rate_limit`` requests per second,
    ``burst``, ``max_concurrent``, ``daily``) are None when unset."""

    id: str
    role: Role
    name: str
    created_at: datetime
    revoked: bool = False
    models: tuple[str, ...] = ALL_MODELS
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    rotated_at: datetime | None = None
    previous_expires_at: datetime | None = None  # the rotated-out secret works until then
    rate_limit: float | None = None
    burst: int | None = None
    max_concurrent: int | None = None
    daily: int | None = None
    daily_tokens: int | None = None
