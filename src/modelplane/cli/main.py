"""``modelplane`` commands (the stable surface of docs/cli.md)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from modelplane import errors
from modelplane.cli.output import (
    console,
    handled,
    human_size,
    print_report,
    state_style,
    table,
)
from modelplane.client import Client, pack_directory

app = typer.Typer(
    help="modelplane: serve trained models securely.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
models_app = typer.Typer(help="Inspect and manage models.", no_args_is_help=True)
deployments_app = typer.Typer(help="Inspect deployments.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(deployments_app, name="deployments")

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _print_json(value: Any) -> None:
    console.print_json(json.dumps(value, default=str))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port.")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port.")] = None,
    home: Annotated[Path | None, typer.Option(help="State folder ($MODELPLANE_HOME).")] = None,
    demo: Annotated[bool, typer.Option(help="Deploy the iris demo on first start.")] = False,
) -> None:
    """Start the control plane and gateway (default 127.0.0.1:8000)."""
    from modelplane.server import serve as run_server
    from modelplane.settings import Settings

    settings = Settings()
    server = settings.server.model_copy(
        update={
            k: v
            for k, v in {"host": host, "port": port, "grpc_port": grpc_port}.items()
            if v is not None
        }
    )
    update: dict[str, Any] = {"server": server}
    if home is not None:
        update["home"] = home
    if demo:
        update["demo"] = True
    run_server(settings.model_copy(update=update))


def _dims(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(d) for d in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"use comma-separated integers, e.g. 1,3,32,32: {text!r}"
        ) from None


@app.command()
def push(
    path: Annotated[Path, typer.Argument(help="Model file or directory to upload.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name.")],
    format: Annotated[
        str, typer.Option(help="auto|onnx|sklearn|torch|keras|tensorflow|transformers")
    ] = "auto",
    description: Annotated[str, typer.Option(help="What this version is.")] = "",
    tag: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    trust_pickle: Annotated[
        bool, typer.Option(help="Allow a pickle (scikit-learn); loaded only in isolation.")
    ] = False,
    samples: Annotated[
        Path | None, typer.Option(help="Inputs for the parity check (.npz or JSON).")
    ] = None,
    tolerance: Annotated[float | None, typer.Option(help="Parity tolerance (atol/rtol).")] = None,
    force: Annotated[bool, typer.Option(help="Keep a model that fails parity.")] = False,
    input_shape: Annotated[
        str | None, typer.Option(help="Example input shape for TorchScript, e.g. 1,3,32,32.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Upload a model file as a new immutable version (converted to ONNX and verified when it
    is not ONNX)."""
    tags = {}
    for item in tag or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"invalid tag {item!r}: use KEY=VALUE")
        tags[key] = value
    with handled(), Client() as client, tempfile.TemporaryDirectory() as scratch:
        if path.is_dir():
            path = pack_directory(path, Path(scratch))
        elif not path.is_file():
            raise errors.InvalidInput(f"{path} is not a file or directory")
        size = path.stat().st_size
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=console,
            transient=True,
            disable=as_json,
        ) as progress:
            task = progress.add_task(f"uploading {path.name}", total=size)

            def on_stage(stage: str) -> None:
                label = {"convert": "converting", "verify": "verifying parity",
                         "store": "storing", "done": "done"}.get(stage, stage)  # fmt: skip
                progress.update(task, description=label, completed=size)

            version = client.push(
                path, name, format=format, description=description, tags=tags,
                progress=lambda sent: progress.update(task, completed=sent),
                trust_pickle=trust_pickle, samples=samples, tolerance=tolerance, force=force,
                input_shape=_dims(input_shape), on_stage=on_stage,
            )  # fmt: skip
        if as_json:
            _print_json(version)
            return
        converted = (
            f" from {version['source_format']}" if version["source_format"] != "onnx" else ""
        )
        console.print(
            f"pushed [bold]{version['ref']}[/bold]{converted} ({human_size(version['size'])}, "
            f"sha256:{version['digest'][:12]})"
        )
        if report := version.get("report"):
            print_report(report)


@models_app.command("list")
def models_list(as_json: Json = False) -> None:
    """List models."""
    with handled(), Client() as client:
        models = client.models()
    if as_json:
        _print_json(models)
        return
    table(
        ["NAME", "LATEST", "ALIASES", "CREATED"],
        [
            [
                m["name"],
                m["latest_version"],
                ", ".join(f"{a}→{v}" for a, v in m["aliases"].items()),
                m["created_at"][:16].replace("T", " "),
            ]
            for m in models
        ],
    )


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION or NAME@ALIAS")],
    as_json: Json = False,
) -> None:
    """Show a model's versions, or one version with its signature."""
    with handled(), Client() as client:
        if ":" in ref or "@" in ref:
            name, _, version = ref.replace("@", ":").partition(":")
            detail: Any = client.version(name, version)
        else:
            detail = client.model(ref)
    if as_json:
        _print_json(detail)
        return
    versions = detail.get("versions", [detail])
    table(
        ["VERSION", "FORMAT", "SIZE", "DIGEST", "ALIASES", "CREATED", "BY"],
        [
            [
                v["version"],
                v["source_format"],
                human_size(v["size"]),
                v["digest"][:12],
                ", ".join(v["aliases"]),
                v["created_at"][:16].replace("T", " "),
                v["created_by"],
            ]
            for v in versions
        ],
        title=versions[0]["model"] if versions else ref,
    )
    if versions and versions[-1].get("report"):
        print_report(versions[-1]["report"])
    if versions:
        sig = versions[-1]["signature"]
        table(
            ["", "NAME", "DATATYPE", "SHAPE"],
            [["input", t["name"], t["datatype"], t["shape"]] for t in sig["inputs"]]
            + [["output", t["name"], t["datatype"], t["shape"]] for t in sig["outputs"]],
            title=f"signature of {versions[-1]['ref']}",
        )


@models_app.command("alias")
def models_alias(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    alias: Annotated[str, typer.Argument(help="Alias to point at it, e.g. production")],
) -> None:
    """Point an alias (e.g. production) at a version."""
    name, sep, version = ref.partition(":")
    if not sep or not version.isdigit():
        raise typer.BadParameter("use NAME:VERSION, for example iris:2")
    with handled(), Client() as client:
        client.set_alias(name, int(version), alias)
    console.print(f"{name}@{alias} → {name}:{version}")


@models_app.command("delete")
def models_delete(ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION")]) -> None:
    """Delete a version, or a model with all its versions (refused while deployed)."""
    name, sep, version = ref.partition(":")
    with handled(), Client() as client:
        if sep:
            client.delete_version(name, int(version))
        else:
            client.delete_model(name)
    console.print(f"deleted {ref}")


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


@app.command()
def optimize(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION to start from")],
    quantize: Annotated[str | None, typer.Option(help="int8 or fp16")] = None,
    level: Annotated[str | None, typer.Option(help="basic, extended or all")] = None,
    as_json: Json = False,
) -> None:
    """Make a faster version: graph optimization and/or quantization, measured and reported."""
    name, sep, version = ref.partition(":")
    if not sep or not version.isdigit():
        raise typer.BadParameter("use NAME:VERSION, for example mlp:1")
    with handled(), Client() as client, console.status("optimizing") as status:
        result = client.optimize(
            name, int(version), level=level, quantize=quantize,
            on_stage=lambda stage: status.update(f"{stage}..."),
        )  # fmt: skip
    if as_json:
        _print_json(result)
        return
    console.print(f"created [bold]{result['ref']}[/bold] from {ref} ({result['description']})")
    if report := result.get("report"):
        print_report(report)


conversions_app = typer.Typer(help="Follow conversions of pushed models.", no_args_is_help=True)
app.add_typer(conversions_app, name="conversions")


@conversions_app.command("show")
def conversions_show(conversion_id: str, as_json: Json = False) -> None:
    """Show a conversion: state, stage, error, parity report."""
    with handled(), Client() as client:
        job = client.conversion(conversion_id)
    if as_json:
        _print_json(job)
        return
    console.print(f"[bold]{job['id']}[/bold]  {job['model']}  {job['source_format']}  "
                  f"{job['state']} ({job['stage']})")  # fmt: skip
    if job["error"]:
        console.print(f"error: {job['error']}", highlight=False)
    if job["report"]:
        print_report(job["report"])


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
    app()
