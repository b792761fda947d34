"""Deployment commands: deploy, undeploy, deployments list/status/logs."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from modelplane import errors
from modelplane.cli.apps import Json, app, deployments_app
from modelplane.cli.apps import print_json as _print_json
from modelplane.cli.output import console, handled, state_style, table
from modelplane.client import Client


@app.command()
def deploy(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS")],
    replicas: Annotated[int, typer.Option(min=0, max=64, help="Replica count.")] = 1,
    name: Annotated[str | None, typer.Option(help="Deployment name (default: model)")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until every replica is ready.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 120.0,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Largest merged batch (1 turns batching off). [32]")
    ] = None,
    max_queue_delay_ms: Annotated[
        float | None, typer.Option(help="Wait up to this for a fuller batch. [0]")
    ] = None,
    preferred_batch_size: Annotated[
        list[int] | None, typer.Option(help="Batch size to aim for, repeatable.")
    ] = None,
    max_queued: Annotated[
        int | None, typer.Option(help="Requests in flight before 429. [256]")
    ] = None,
    payload_log_rate: Annotated[
        float | None, typer.Option(help="Share of request/response bodies to log (0-1). [0]")
    ] = None,
) -> None:
    """Deploy a model version (create or update)."""
    given = {
        "max_batch_size": max_batch_size,
        "max_queue_delay_ms": max_queue_delay_ms,
        "preferred_batch_sizes": preferred_batch_size,
        "max_queued_requests": max_queued,
        "payload_log_rate": payload_log_rate,
    }
    config = {k: v for k, v in given.items() if v is not None} or None
    with handled(), Client() as client:
        info = client.deploy(ref, replicas=replicas, name=name, config=config)
        console.print(
            f"deploying {info['ref']} as [bold]{info['name']}[/bold] "
            f"({replicas} replica{'s' if replicas != 1 else ''})"
        )
        if not wait or replicas == 0:
            return
        deadline = time.monotonic() + timeout
        with console.status("waiting for replicas to be ready"):
            while True:
                info = client.deployment(info["name"])
                if info["state"] == "ready":
                    break
                if time.monotonic() > deadline:
                    why = f" (last failure: {info['last_failure']})" if info["last_failure"] else ""
                    raise errors.Unavailable(
                        f"{info['name']} not ready after {timeout:g}s: {info['ready_replicas']}"
                        f"/{info['desired_replicas']} replicas ready{why}"
                    )
                time.sleep(0.5)
        console.print(f"[green]ready[/green]: POST {client.url}{info['endpoint']}")


@deployments_app.command("list")
def deployments_list(as_json: Json = False) -> None:
    """List deployments and their state."""
    with handled(), Client() as client:
        items = client.deployments()
    if as_json:
        _print_json(items)
        return
    table(
        ["NAME", "MODEL", "STATE", "READY", "ENDPOINT"],
        [
            [
                d["name"],
                d["ref"],
                state_style(d["state"])(d["state"]),
                f"{d['ready_replicas']}/{d['desired_replicas']}",
                d["endpoint"],
            ]
            for d in items
        ],
    )


@deployments_app.command("status")
def deployments_status(name: str, as_json: Json = False) -> None:
    """Show one deployment with its replicas."""
    with handled(), Client() as client:
        d = client.deployment(name)
    if as_json:
        _print_json(d)
        return
    state = state_style(d["state"])(d["state"])
    ready = f"{d['ready_replicas']}/{d['desired_replicas']} ready"
    console.print(f"[bold]{d['name']}[/bold]  {d['ref']}  {state}  {ready}")
    if d["last_failure"]:
        console.print(f"last failure: {d['last_failure']}", highlight=False)
    if d.get("events"):
        table(["TIME", "ACTION", "REPLICA", "REASON"],
              [[e["time"], e["action"], e["replica"], e["reason"]] for e in d["events"][-10:]],
              title="recent events")  # fmt: skip
    table(
        ["REPLICA", "VERSION", "STATE", "PID", "UP", "MESSAGE"],
        [
            [
                r["id"],
                r["version"],
                r["state"],
                r["pid"],
                f"{time.time() - r['started_at']:.0f}s",
                r["message"],
            ]
            for r in d["replicas"]
        ],
    )


def _log_line(record: dict[str, Any]) -> str:
    fields = record.get("fields") or {}
    extra = " ".join(f"{k}={v}" for k, v in fields.items() if k != "logger")
    return (
        f"{record.get('time', '')} {record.get('level', ''):<7} {record.get('replica') or '-'}"
        f" {record.get('request_id') or '-'} {record.get('message', '')} {extra}"
    ).rstrip()


@deployments_app.command("logs")
def deployments_logs(
    name: str,
    replica: Annotated[str | None, typer.Option(help="Only this replica.")] = None,
    since: Annotated[str | None, typer.Option(help="30s, 10m, 2h, 1d or an ISO time.")] = None,
    level: Annotated[str | None, typer.Option(help="Lowest level: debug..critical.")] = None,
    limit: Annotated[int, typer.Option(help="Most records to show.")] = 200,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Show a deployment's logs (one line per record: time, level, replica, request id)."""

    def show(record: dict[str, Any]) -> None:
        print(json.dumps(record) if as_json else _log_line(record), flush=True)

    with handled(), Client() as client:
        if follow:
            try:
                for record in client.follow_logs(name, replica=replica, since=since, level=level):
                    show(record)
            except KeyboardInterrupt:
                return
        else:
            for record in client.logs(name, replica=replica, since=since, level=level,
                                      limit=limit):  # fmt: skip
                show(record)


@app.command()
def undeploy(name: str) -> None:
    """Delete a deployment and stop its replicas."""
    with handled(), Client() as client:
        client.undeploy(name)
    console.print(f"undeployed {name}")
