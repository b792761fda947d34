"""``modelplane`` commands (the stable surface of docs/cli.md): serve and predict here, the
rest in ``models`` and ``deployments``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape

from modelplane import errors
from modelplane.cli import admin, audit, cluster, deployments, keys, models, nodes, spec
from modelplane.cli.apps import app
from modelplane.cli.apps import print_json as _print_json
from modelplane.cli.output import err_console, handled
from modelplane.client import Client
from modelplane.settings import CliSettings

__all__ = [
    "admin",
    "app",
    "audit",
    "cluster",
    "deployments",
    "keys",
    "main",
    "models",
    "nodes",
    "spec",
]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port.")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port.")] = None,
    home: Annotated[Path | None, typer.Option(help="State folder ($MODELPLANE_HOME).")] = None,
    demo: Annotated[bool, typer.Option(help="Deploy the iris demo on first start.")] = False,
    executor: Annotated[
        str | None, typer.Option(help="Where replicas run: local (default) or ray.")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address (HOST:PORT) for --executor ray.")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate: serve HTTPS and gRPC over TLS.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(help="PEM CA: require client certificates it signed (mTLS)."),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            help="Host names the HTTP port answers to, comma-separated, besides HOST:PORT, "
            "localhost and 127.0.0.1 (DNS-rebinding defence; '*' turns it off)."
        ),
    ] = None,
    cors_origins: Annotated[
        str | None,
        typer.Option(help="Origins whose pages may call the API (CORS), comma-separated."),
    ] = None,
) -> None:
    """Start the control plane and gateway (default 127.0.0.1:8000)."""
    from modelplane.server import serve as run_server
    from modelplane.settings import Settings

    settings = Settings()
    server = settings.server.model_copy(
        update={
            k: v
            for k, v in {
                "host": host,
                "port": port,
                "grpc_port": grpc_port,
                "tls_cert": tls_cert,
                "tls_key": tls_key,
                "tls_client_ca": tls_client_ca,
                "allowed_hosts": _listed("allowed_hosts", allowed_hosts, "--allowed-hosts"),
                "cors_origins": _listed("cors_origins", cors_origins, "--cors-origins"),
            }.items()
            if v is not None
        }
    )
    update: dict[str, Any] = {"server": server}
    if home is not None:
        update["home"] = home
    if demo:
        update["demo"] = True
    scheduler = {k: v for k, v in {"executor": executor, "ray_address": ray_address}.items() if v}
    if scheduler.get("executor") not in (None, "local", "ray"):
        raise typer.BadParameter("choose local or ray", param_hint="--executor")
    if scheduler:
        update["scheduler"] = settings.scheduler.model_copy(update=scheduler)
    run_server(settings.model_copy(update=update))


def _listed(field: str, value: str | None, flag: str) -> list[str] | None:
    """A comma-separated server setting given on the command line, checked like the setting."""
    from pydantic import ValidationError

    from modelplane.settings import ServerSettings

    if value is None:
        return None
    try:
        listed: list[str] = getattr(ServerSettings.model_validate({field: value}), field)
    except ValidationError as exc:
        raise typer.BadParameter(str(exc.errors()[0]["msg"]), param_hint=flag) from None
    return listed


@app.command()
def predict(
    name: Annotated[str, typer.Argument(help="Deployed model name.")],
    input: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help='JSON, or a path to a JSON file: a V2 request, or {"input_name": [[...]]}',
        ),
    ],
    version: Annotated[str | None, typer.Option(help="Version to call.")] = None,
) -> None:
    """Run inference and print the outputs as JSON."""
    with handled(), Client() as client:
        text = input
        if not input.lstrip().startswith(("{", "[")):
            path = Path(input)
            if not path.is_file():
                raise errors.InvalidInput(f"--input is neither JSON nor a file: {input!r}")
            text = path.read_text()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise errors.InvalidInput(f"--input is not valid JSON: {exc}") from None
        if isinstance(doc, dict) and isinstance(doc.get("inputs"), list):
            result: Any = client.infer_v2(name, doc, version)
        elif isinstance(doc, dict):
            outputs = client.infer(name, doc, version)
            result = {k: np.asarray(v).tolist() for k, v in outputs.items()}
        else:
            raise errors.InvalidInput('--input must be a JSON object: {"input_name": [[...]]}')
    _print_json(result)


def main() -> None:
    """The ``modelplane`` command. An unexpected error is one line, never a traceback
    (``MODELPLANE_DEBUG=1`` shows it)."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if CliSettings().debug:
            raise
        err_console.print(
            f"[red]error:[/red] unexpected {type(exc).__name__}: {escape(str(exc))}\n"
            "This is a bug in modelplane; run again with MODELPLANE_DEBUG=1 for the traceback "
            "and report it.",
            highlight=False,
        )
        sys.exit(1)
