"""Deployment commands: deploy, undeploy, deployments list/status/logs."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from modelplane.cli.apps import Json, app, deployments_app
from modelplane.cli.apps import print_json as _print_json
from modelplane.cli.output import console, handled, state_style, table
from modelplane.client import Client
from modelplane.domain import DEFAULT_REQUEST, RolloutPolicy, parse_pairs


@app.command()
def deploy(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS")],
    replicas: Annotated[
        int | None,
        typer.Option(min=0, max=64, help="Replica count (autoscaled: to start). [kept, or 1]"),
    ] = None,
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
    input_guard: Annotated[
        str | None,
        typer.Option(help="Inputs far outside the version's samples: off|log|flag|reject. [off]"),
    ] = None,
    input_guard_sigmas: Annotated[
        float | None, typer.Option(help="Std beyond the samples' range that is too far. [6]")
    ] = None,
    cpu: Annotated[
        float | None, typer.Option(help=f"CPU cores per replica. [{DEFAULT_REQUEST.cpu:g}]")
    ] = None,
    memory: Annotated[
        int | None, typer.Option(help=f"Memory per replica in MB. [{DEFAULT_REQUEST.memory_mb}]")
    ] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs per replica. [0]")] = None,
    node_label: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE a node must have, repeatable.")
    ] = None,
    gpu_type: Annotated[str | None, typer.Option(help="GPU type a node must have.")] = None,
    zone: Annotated[
        list[str] | None, typer.Option(help="Zone replicas may run in, repeatable. [any]")
    ] = None,
    spread_weight: Annotated[
        float | None, typer.Option(help="Placement: weight of spreading replicas. [1]")
    ] = None,
    pack_weight: Annotated[
        float | None, typer.Option(help="Placement: weight of keeping whole nodes free. [1]")
    ] = None,
    cost_weight: Annotated[
        float | None, typer.Option(help="Placement: weight of node cost. [1]")
    ] = None,
    min_replicas: Annotated[
        int | None, typer.Option("--min", help="Autoscale: fewest replicas (0 = scale to zero).")
    ] = None,
    max_replicas: Annotated[
        int | None, typer.Option("--max", help="Autoscale: most replicas.")
    ] = None,
    target_ongoing: Annotated[
        float | None, typer.Option(help="Autoscale: requests in flight per replica. [2]")
    ] = None,
    target_latency_ms: Annotated[
        float | None, typer.Option(help="Autoscale: add a replica above this mean latency.")
    ] = None,
    upscale_delay: Annotated[
        float | None, typer.Option(help="Autoscale: seconds of need before adding. [5]")
    ] = None,
    downscale_delay: Annotated[
        float | None, typer.Option(help="Autoscale: idle seconds before removing. [60]")
    ] = None,
    no_autoscale: Annotated[
        bool, typer.Option("--no-autoscale", help="Turn autoscaling off (fixed --replicas).")
    ] = False,
    reset: Annotated[
        bool, typer.Option("--reset", help="Settings not given go back to their defaults.")
    ] = False,
    canary: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            max=100,
            help="Serve beside the current version, for this % of "
            "requests (then promote or rollback).",
        ),
    ] = None,
    shadow: Annotated[
        bool,
        typer.Option(
            "--shadow",
            help="Serve beside the current version on copies of "
            "every request (answers compared, discarded).",
        ),
    ] = False,
    rollout: Annotated[
        str | None,
        typer.Option(
            help="Later versions take over step by step, e.g. 'steps=10,50,100 "
            "interval=2m max-error-rate=1% max-p99-ratio=1.2 max-disagreement=2%'."
        ),
    ] = None,
    rollout_off: Annotated[
        bool, typer.Option("--rollout-off", help="Later versions take over at once again.")
    ] = False,
) -> None:
    """Deploy a model version (create or update). On an existing deployment, every setting not
    given keeps its current value (replicas, serving config, resources, placement, autoscaling);
    --reset puts those back to their defaults instead. With --canary or --shadow the version
    serves beside the current one; with a rollout policy a new version takes over step by
    step, judged on its error rate, latency and agreement with the current one."""
    resources = _given({"cpu": cpu, "memory_mb": memory, "gpus": gpus})
    placement = _given({
        "node_labels": _labels(node_label) if node_label else None, "gpu_type": gpu_type,
        "zones": zone, "spread_weight": spread_weight, "pack_weight": pack_weight,
        "cost_weight": cost_weight,
    })  # fmt: skip
    autoscaling = _given({
        "min_replicas": min_replicas, "max_replicas": max_replicas,
        "target_ongoing_requests": target_ongoing, "target_latency_ms": target_latency_ms,
        "upscale_delay_s": upscale_delay, "downscale_delay_s": downscale_delay,
    })  # fmt: skip
    given = {
        "max_batch_size": max_batch_size,
        "max_queue_delay_ms": max_queue_delay_ms,
        "preferred_batch_sizes": preferred_batch_size,
        "max_queued_requests": max_queued,
        "payload_log_rate": payload_log_rate,
        "input_guard": input_guard,
        "input_guard_sigmas": input_guard_sigmas,
    }
    config = _given(given)
    policy = _rollout(rollout) if rollout is not None else None
    with handled(), Client() as client:
        info = client.deploy(
            ref, replicas=replicas, name=name, config=config, resources=resources,
            placement=placement, autoscaling=autoscaling, autoscaling_off=no_autoscale,
            reset=reset, canary=canary, shadow=shadow, rollout=policy, rollout_off=rollout_off,
            wait=False,
        )  # fmt: skip
        announce(client, info, wait, timeout)


def announce(client: Client, info: Any, wait: bool, timeout: float) -> None:
    """Say what a deploy began: the replicas, or how requests split between versions; with
    ``wait``, once they are ready."""
    if len(info["traffic"]) > 1:
        _beside(client, info, wait, timeout)
        return
    scaling = info.get("autoscaling")
    wanted = info["desired_replicas"]
    count = (
        f"{scaling['min_replicas']}-{scaling['max_replicas']} replicas, autoscaled"
        if scaling
        else f"{wanted} replica{'s' if wanted != 1 else ''}"
    )
    console.print(f"deploying {info['ref']} as [bold]{info['name']}[/bold] ({count})")
    if not wait or wanted == 0:
        if wanted == 0:
            console.print(
                f"scaled to zero: the first request to {info['endpoint']} starts a replica"
            )
        return
    with console.status("waiting for replicas to be ready"):
        info = client.wait_ready(info["name"], timeout)
    console.print(f"[green]ready[/green]: POST {client.url}{info['endpoint']}")


def _rollout(text: str) -> dict[str, Any]:
    try:
        return RolloutPolicy.parse(text).to_dict()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--rollout") from None


def _split(info: Any) -> str:
    """``iris:2 90%, iris:3 10%`` (a shadow: ``iris:3 shadow``)."""
    shares = []
    for t in info["traffic"]:
        share = "shadow" if t["role"] == "shadow" else f"{t['percent']:g}%"
        shares.append(f"{t['ref']} {share}")
    return ", ".join(shares)


def _beside(client: Client, info: Any, wait: bool, timeout: float) -> None:
    """A canary, shadow or rollout began: say how requests split, once the new version's
    replica is ready."""
    new = info["traffic"][-1]
    console.print(f"{info['name']}: {new['ref']} beside {info['ref']} ({new['role']})")
    if wait:
        with console.status(f"waiting for {new['ref']} to be ready"):
            info = client.wait_ready(info["name"], timeout)
    console.print(f"traffic: {_split(info)}", highlight=False)
    if new["role"] == "rollout":
        console.print(
            f"the rollout moves on its own: `modelplane deployments status {info['name']}`"
        )
    else:
        console.print(
            f"then `modelplane promote {info['name']}` or `modelplane rollback {info['name']}`"
        )


@app.command()
def promote(name: str) -> None:
    """The canary's or shadow's version serves every request from now on."""
    with handled(), Client() as client:
        info = client.promote(name)
    console.print(f"promoted: {info['name']} serves {info['ref']} (traffic: {_split(info)})")


@app.command()
def rollback(name: str) -> None:
    """Every request back to the current version (the canary stops), or, with no canary, back
    to the version served before the last promotion or deploy."""
    with handled(), Client() as client:
        info = client.rollback(name)
    console.print(f"rolled back: {info['name']} serves {info['ref']} (traffic: {_split(info)})")


def _given(values: dict[str, Any]) -> dict[str, Any] | None:
    return {k: v for k, v in values.items() if v is not None} or None


def _labels(pairs: list[str]) -> dict[str, str]:
    try:
        return parse_pairs(pairs, "node label")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--node-label") from None


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
    if len(d["traffic"]) > 1:
        console.print(f"traffic: {_split(d)}", highlight=False)
    if d["rollout"]:
        policy = RolloutPolicy.from_dict(d["rollout"]).describe()
        console.print(f"rollout policy: {policy}", highlight=False)
    if d["rollout_status"]:
        console.print(f"rollout: {d['rollout_status']}", highlight=False)
    if d["last_rollout"]:
        last = d["last_rollout"]
        console.print(f"last: {last['version']} {last['result']} ({last['reason']})",
                      highlight=False)  # fmt: skip
    if d["last_failure"]:
        console.print(f"last failure: {d['last_failure']}", highlight=False)
    for reason in sorted(set(d["pending"])):
        count = d["pending"].count(reason)
        console.print(f"[yellow]pending[/yellow] ({count}): {reason}", highlight=False)
    if d.get("events"):
        table(["TIME", "ACTION", "REPLICA", "REASON"],
              [[e["time"], e["action"], e["replica"], e["reason"]] for e in d["events"][-10:]],
              title="recent events")  # fmt: skip
    table(
        ["REPLICA", "VERSION", "STATE", "NODE", "PID", "UP", "MESSAGE"],
        [
            [
                r["id"],
                r["version"],
                r["state"],
                r["node"],
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
