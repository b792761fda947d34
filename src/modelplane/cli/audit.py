"""``modelplane audit``: who did what, from where, with what result (admin keys only)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from modelplane.cli.apps import Json, app
from modelplane.cli.output import handled
from modelplane.client import AuditEntry, Client


def audit_line(entry: AuditEntry) -> str:
    """``TIME ACTION RESULT NAME(KEY) from SOURCE TARGET DETAIL``."""
    who = f"{entry['key_name'] or '?'}({entry['key_id']})" if entry["key_id"] else "anonymous"
    line = (
        f"{entry['at']} {entry['action']:<13} {entry['result']:<4} {who} "
        f"from {entry['source']} {entry['target'] or '-'}"
    )
    return f"{line} {entry['detail']}".rstrip()


@app.command()
def audit(
    since: Annotated[str | None, typer.Option(help="30s, 10m, 2h, 1d or an ISO time.")] = None,
    key: Annotated[str | None, typer.Option(help="Only this key id.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action, e.g. deploy, key.create or denied.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Most entries to show (the newest).")] = 100,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new entries.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Show the audit trail: management changes and denied requests, newest last."""

    def show(entry: AuditEntry) -> None:
        print(json.dumps(entry) if as_json else audit_line(entry), flush=True)

    with handled(), Client() as client:
        if follow:
            try:
                for entry in client.follow_audit(since=since, key=key, action=action):
                    show(entry)
            except KeyboardInterrupt:
                return
        else:
            for entry in client.audit(since=since, key=key, action=action, limit=limit):
                show(entry)
