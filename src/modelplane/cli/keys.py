"""Key commands: keys create, list, update, rotate, revoke (admin keys only)."""

from __future__ import annotations

from typing import Annotated

import typer

from modelplane.cli.apps import Json, keys_app
from modelplane.cli.apps import print_json as _print_json
from modelplane.cli.output import console, handled, state_style, table
from modelplane.client import Client, KeyInfo

Models = Annotated[
    list[str] | None,
    typer.Option(
        "--models",
        help="Model names or globs the key may see, e.g. 'fraud-*' (repeat, or separate with "
        "commas; default: every model).",
    ),
]
Expires = Annotated[str | None, typer.Option(help="30d, 12h or an ISO time.")]
RateLimit = Annotated[
    float | None, typer.Option("--rate-limit", help="Requests per second (a token bucket).")
]
Burst = Annotated[
    int | None,
    typer.Option(help="Requests at once above the rate (default: one second's worth)."),
]
MaxConcurrent = Annotated[
    int | None, typer.Option("--max-concurrent", help="Requests in flight at once.")
]
Daily = Annotated[int | None, typer.Option(help="Requests per UTC day (counted per gateway).")]
DailyTokens = Annotated[
    int | None,
    typer.Option("--daily-tokens", help="Language-model tokens (prompt + completion) per UTC day."),
]


def _limits(key: KeyInfo) -> str:
    """``50/s burst 100, 8 at once, 100000/day``, or ``-`` for a key without limits."""
    parts = []
    if key.get("rate_limit") is not None:
        parts.append(f"{key['rate_limit']:g}/s burst {key.get('burst') or 'auto'}")
    if key.get("max_concurrent") is not None:
        parts.append(f"{key['max_concurrent']} at once")
    if key.get("daily") is not None:
        parts.append(f"{key['daily']}/day")
    if key.get("daily_tokens") is not None:
        parts.append(f"{key['daily_tokens']} tokens/day")
    return ", ".join(parts) or "-"


def _globs(raw: list[str] | None) -> list[str] | None:
    if not raw:
        return None
    return [g.strip() for item in raw for g in item.split(",") if g.strip()]


def _show_secret(key: KeyInfo, what: str) -> None:
    console.print(f"{what} key {key['id']} ({key['name']}, {key['role']}, models: "
                  f"{', '.join(key['models'])}, limits: {_limits(key)})",
                  highlight=False)  # fmt: skip
    console.print("\nThe key (shown this once; store it now):\n", highlight=False)
    console.print(key["secret"], highlight=False, soft_wrap=True)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses it, e.g. ci.")],
    role: Annotated[str, typer.Option(help="admin, operator, publisher, invoker or viewer.")],
    models: Models = None,
    expires: Expires = None,
    rate_limit: RateLimit = None,
    burst: Burst = None,
    max_concurrent: MaxConcurrent = None,
    daily: Daily = None,
    daily_tokens: DailyTokens = None,
    as_json: Json = False,
) -> None:
    """Create a key; its secret is printed once and never again. Limits are optional:
    --rate-limit 50 --burst 100 --max-concurrent 8 --daily 100000 --daily-tokens 1000000."""
    with handled(), Client() as client:
        key = client.create_key(
            name, role, models=_globs(models), expires=expires, rate_limit=rate_limit,
            burst=burst, max_concurrent=max_concurrent, daily=daily, daily_tokens=daily_tokens,
        )  # fmt: skip
    if as_json:
        _print_json(key)
        return
    _show_secret(key, "Created")


@keys_app.command("list")
def keys_list(as_json: Json = False) -> None:
    """Every key with its role, model scope, state and last use (never a secret)."""
    with handled(), Client() as client:
        items = client.keys()
    if as_json:
        _print_json(items)
        return
    table(
        ["ID", "NAME", "ROLE", "MODELS", "STATE", "LIMITS", "CREATED", "EXPIRES", "LAST USED"],
        [
            [
                k["id"],
                k["name"],
                k["role"],
                ",".join(k["models"]),
                state_style(k["state"])(k["state"]),
                _limits(k),
                (k["created_at"] or "")[:19],
                (k["expires_at"] or "never")[:19],
                (k["last_used_at"] or "-")[:19],
            ]
            for k in items
        ],
    )


@keys_app.command("update")
def keys_update(
    key_id: Annotated[str, typer.Argument(metavar="ID")],
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    role: Annotated[str | None, typer.Option(help="A new role.")] = None,
    models: Models = None,
    expires: Annotated[str | None, typer.Option(help="30d, an ISO time, or never.")] = None,
    rate_limit: RateLimit = None,
    burst: Burst = None,
    max_concurrent: MaxConcurrent = None,
    daily: Daily = None,
    daily_tokens: DailyTokens = None,
) -> None:
    """Change a key's name, role, model scope (--models '*' for all), expiry or limits (0
    removes a limit)."""
    with handled(), Client() as client:
        key = client.update_key(
            key_id, name=name, role=role, models=_globs(models), expires=expires,
            rate_limit=rate_limit, burst=burst, max_concurrent=max_concurrent, daily=daily,
            daily_tokens=daily_tokens,
        )  # fmt: skip
    console.print(f"{key['id']}: {key['name']}, {key['role']}, models: "
                  f"{', '.join(key['models'])}, expires {key['expires_at'] or 'never'}, "
                  f"limits: {_limits(key)} (in effect within 5 s)", highlight=False)  # fmt: skip


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(metavar="ID")],
    grace: Annotated[
        str, typer.Option(help="How long the old secret keeps working: 30s, 10m, 1h, 1d.")
    ] = "0s",
    as_json: Json = False,
) -> None:
    """Give a key a new secret; the old one works for --grace more."""
    with handled(), Client() as client:
        key = client.rotate_key(key_id, grace)
    if as_json:
        _print_json(key)
        return
    _show_secret(key, "Rotated")
    until = key.get("previous_expires_at")
    console.print(f"\nThe old secret works until {until}." if until else
                  "\nThe old secret no longer works.", highlight=False)  # fmt: skip


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke a key: refused everywhere within 5 s."""
    with handled(), Client() as client:
        key = client.revoke_key(key_id)
    console.print(f"{key['id']} ({key['name']}): revoked", highlight=False)
