"""Node commands: nodes list."""

from __future__ import annotations

from modelplane.cli.apps import Json, nodes_app
from modelplane.cli.apps import print_json as _print_json
from modelplane.cli.output import handled, state_style, table
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
         "$/HOUR"],
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
            ]
            for n in items
        ],
    )  # fmt: skip
