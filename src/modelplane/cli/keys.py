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


def _globs(raw: list[str] | None) -> list[str] | None:
    if not raw:
        return None
    return [g.strip() for item in raw for g in item.split(",") if g.strip()]


def _show_secret(key: KeyInfo, what: str) -> None:
    console.print(f"{what} key {key['id']} ({key['name']}, {key['role']}, models: "
                  f"{', '.join(key['models'])})", highlight=False)  # fmt: skip
    console.print("\nThe key (shown this once; store it now):\n", highlight=False)
    console.print(key["secret"], highlight=False, soft_wrap=True)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses it, e.g. ci.")],
    role: Annotated[str, typer.Option(help="admin, operator, publisher, invoker or viewer.")],
    models: Models = None,
    expires: Expires = None,
    as_json: Json = False,
) -> None:
    """Create a key; its secret is printed once and never again."""
    with handled(), Client() as client:
        key = client.create_key(name, role, models=_globs(models), expires=expires)
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
        ["ID", "NAME", "ROLE", "MODELS", "STATE", "CREATED", "EXPIRES", "LAST USED"],
        [
            [
                k["id"],
                k["name"],
                k["role"],
                ",".join(k["models"]),
                state_style(k["state"])(k["state"]),
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
) -> None:
    """Change a key's name, role, model scope (--models '*' for all) or expiry."""
    with handled(), Client() as client:
        key = client.update_key(
            key_id, name=name, role=role, models=_globs(models), expires=expires
        )
    console.print(f"{key['id']}: {key['name']}, {key['role']}, models: "
                  f"{', '.join(key['models'])}, expires {key['expires_at'] or 'never'} "
                  "(in effect within 5 s)", highlight=False)  # fmt: skip


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
