"""Node commands: nodes list, cordon, drain, uncordon."""

from __future__ import annotations

from typing import Annotated

import typer

from modelplane.cli.apps import Json, nodes_app
from modelplane.cli.apps import print_json as _print_json
from modelplane.cli.output import console, handled, state_style, table
from modelplane.client import Client


@nodes_app.command("list")
def nodes_list(as_json: Json = False) -> None:
    """Nodes with capacity, what is allocated, replicas, cost per hour and state."""
    with handled(), Client() as client:
        items = client.nodes()
    if as_json:
        _print_json(items)
        return
    table(
        ["NODE", "STATE", "ADDRESS", "ZONE", "TYPE", "CPU", "MEMORY (MB)", "GPU", "REPLICAS",
         "$/HOUR", "MAINTENANCE"],
        [
            [
                n["id"],
                state_style(n["state"])(n["state"]),
                n["address"],
                n["zone"] or "-",
                n["instance_type"] or "-",
                f"{n['allocated']['cpu']:g}/{n['capacity']['cpu']:g}",
                f"{n['allocated']['memory_mb']:g}/{n['capacity']['memory_mb']:g}",
                f"{n['allocated']['gpus']:g}/{n['capacity']['gpus']:g}"
                + (f" {n['gpu_type']}" if n["gpu_type"] else ""),
                n["replicas"],
                f"{n['cost_per_hour']:.3f}",
                n.get("maintenance", ""),
            ]
            for n in items
        ],
    )  # fmt: skip


Reason = Annotated[str, typer.Option(help="Why, for the other operators.")]


@nodes_app.command("cordon")
def nodes_cordon(node: str, reason: Reason = "") -> None:
    """Place no new replicas on NODE (those running stay)."""
    with handled(), Client() as client:
        info = client.cordon(node, reason=reason)
    console.print(f"{node}: {info['state']} ({info['maintenance']})")


@nodes_app.command("drain")
def nodes_drain(node: str, reason: Reason = "") -> None:
    """Move every replica off NODE without downtime (new ones start elsewhere first)."""
    with handled(), Client() as client:
        info = client.cordon(node, reason=reason, drain=True)
    console.print(f"{node}: {info['state']} ({info['maintenance']}); its {info['replicas']} "
                  "replica(s) move as their replacements become ready")  # fmt: skip


@nodes_app.command("uncordon")
def nodes_uncordon(node: str) -> None:
    """Let NODE take replicas again."""
    with handled(), Client() as client:
        client.uncordon(node)
    console.print(f"{node}: takes replicas again")
