"""``modelplane cluster status``: the servers, which one leads and since when, what they share."""

from __future__ import annotations

from datetime import UTC, datetime

from modelplane.cli.apps import Json, cluster_app
from modelplane.cli.apps import print_json as _print_json
from modelplane.cli.output import console, handled, table
from modelplane.client import Client


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@cluster_app.command("status")
def cluster_status(as_json: Json = False) -> None:
    """The servers sharing this database, which one runs the controller and since when, and
    the database and artifact store in use."""
    with handled(), Client() as client:
        info = client.cluster()
    if as_json:
        _print_json(info)
        return
    table(
        ["SERVER", "URL", "ROLE", "STARTED", "LAST SEEN"],
        [
            [s["id"] + (" (this)" if s["this"] else ""), s["url"],
             "leader" if s["leader"] else "follower", _when(s["started_at"]),
             f"{s['seen_s_ago']:g}s ago"]
            for s in info["servers"]
        ],
    )  # fmt: skip
    leader = info["leader"] or "none (being elected)"
    console.print(f"leader: {leader} since {_when(info['leader_since'])}", highlight=False)
    console.print(f"database: {info['database']}", highlight=False)
    console.print(f"artifacts: {info['storage']}", highlight=False)
