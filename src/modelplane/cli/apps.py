"""The Typer apps and helpers every command module shares."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from modelplane.cli.output import console

app = typer.Typer(
    help="modelplane: serve trained models securely.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Inspect and manage models.", no_args_is_help=True)
deployments_app = typer.Typer(help="Inspect deployments.", no_args_is_help=True)
conversions_app = typer.Typer(help="Follow conversions of pushed models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(deployments_app, name="deployments")
app.add_typer(conversions_app, name="conversions")
nodes_app = typer.Typer(help="Inspect the nodes replicas run on.", no_args_is_help=True)
app.add_typer(nodes_app, name="nodes")
admin_app = typer.Typer(help="Operate the server itself (admin keys).", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
keys_app = typer.Typer(help="Manage API keys (admin keys only).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
cluster_app = typer.Typer(help="The servers sharing one database.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def print_json(value: Any) -> None:
    console.print_json(json.dumps(value, default=str))
