"""/api/v1/keys: create, list, change, rotate and revoke API keys (admins only)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends

from modelplane.api.deps import allow
from modelplane.api.schemas import KeyCreated, KeyIn, KeyOut, KeyUpdateIn, RotateIn
from modelplane.api.services import Services
from modelplane.domain import ApiKey, Principal
from modelplane.errors import InvalidInput
from modelplane.registry.keys import KeyChange, KeySpec, Quota
from modelplane.security.policy import Action

DURATION = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
Admin = Annotated[Principal, Depends(allow(Action.MANAGE_KEYS))]


def parse_duration(text: str, what: str) -> timedelta:
    match = DURATION.match(text.strip())
    if match is None:
        raise InvalidInput(f"invalid {what} {text!r}: use 30s, 10m, 1h or 30d")
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


def parse_expiry(text: str, now: datetime) -> datetime:
    """``30d`` (from now) or an ISO 8601 time in the future."""
    if DURATION.match(text.strip()):
        when = now + parse_duration(text, "expiry")
    else:
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(
                f"invalid expiry {text!r}: use 30d, 12h or an ISO time, e.g. 2030-01-01T00:00Z"
            ) from None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when <= now:
        raise InvalidInput(f"expiry {text!r} is in the past")
    return when


def create_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1/keys", tags=["keys"])
    keys = services.keys

    def out(key: ApiKey) -> KeyOut:
        return KeyOut.of(key, datetime.now(UTC))

    @router.post("", status_code=201, response_model=KeyCreated)
    def create(body: KeyIn, _: Admin) -> KeyCreated:
        """A new key. Its secret is in this response only: it is stored hashed."""
        expires = parse_expiry(body.expires, datetime.now(UTC)) if body.expires else None
        quota = Quota(
            body.rate_limit, body.burst, body.max_concurrent, body.daily, body.daily_tokens
        )
        key, secret = keys.create(KeySpec(body.role, body.name, body.models, expires, quota))
        return KeyCreated(**out(key).model_dump(), secret=secret)

    @router.get("", response_model=list[KeyOut])
    def list_keys(_: Admin) -> list[KeyOut]:
        """Every key, revoked and expired ones too; never a secret."""
        return [out(k) for k in keys.list()]

    @router.get("/{key_id}", response_model=KeyOut)
    def show(key_id: str, _: Admin) -> KeyOut:
        return out(keys.get(key_id))

    @router.patch("/{key_id}", response_model=KeyOut)
    def change(key_id: str, body: KeyUpdateIn, _: Admin) -> KeyOut:
        """Change a key's name, role, model scope, expiry (``never`` removes it) or limits (0
        removes one); takes effect within 5 s."""
        never = body.expires is not None and body.expires.strip().lower() == "never"
        expires = None
        if body.expires is not None and not never:
            expires = parse_expiry(body.expires, datetime.now(UTC))
        quota = Quota(
            body.rate_limit, body.burst, body.max_concurrent, body.daily, body.daily_tokens
        )
        change = KeyChange(body.name, body.role, body.models, expires, never, quota)
        return out(keys.update(key_id, change))

    @router.post("/{key_id}/rotate", response_model=KeyCreated)
    def rotate(key_id: str, body: RotateIn, _: Admin) -> KeyCreated:
        """A new secret (in this response only); the old one keeps working for ``grace``."""
        key, secret = keys.rotate(key_id, parse_duration(body.grace, "grace"))
        return KeyCreated(**out(key).model_dump(), secret=secret)

    @router.delete("/{key_id}", response_model=KeyOut)
    def revoke(key_id: str, _: Admin) -> KeyOut:
        """Revoke a key: refused on every route and on gRPC within 5 s. The record stays."""
        return out(keys.revoke(key_id))

    return router
