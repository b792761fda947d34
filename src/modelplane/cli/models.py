"""Model commands: push, models list/show/alias/delete, optimize, conversions show."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from modelplane import errors
from modelplane.cli.apps import Json, app, conversions_app, models_app
from modelplane.cli.apps import print_json as _print_json
from modelplane.cli.deployments import announce
from modelplane.cli.output import console, handled, human_size, print_report, table
from modelplane.client import Client, pack_directory
from modelplane.domain import parse_pairs
from modelplane.domain.traffic import parse_share


def _dims(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(d) for d in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"use comma-separated integers, e.g. 1,3,32,32: {text!r}"
        ) from None


def _labels(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--labels") from None
    return [line.strip() for line in lines if line.strip()]


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
    allow_duplicate: Annotated[
        bool, typer.Option(help="Make a new version even if this content was pushed before.")
    ] = False,
    precision: Annotated[
        str | None, typer.Option(help="Language models: fp32 (default), int8 or int4 weights.")
    ] = None,
    preprocess: Annotated[
        str | None,
        typer.Option(help="Files in: image:resize=224,normalize=imagenet or audio:rate=16000,..."),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Class labels, one per line, in the model's order.")
    ] = None,
    top_k: Annotated[int, typer.Option(help="Labels in each answer (with --preprocess).")] = 5,
    as_json: Json = False,
) -> None:
    """Upload a model file as a new immutable version (converted to ONNX and verified when it
    is not ONNX)."""
    try:
        tags = parse_pairs(tag or [], "tag")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tag") from None
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
                allow_duplicate=allow_duplicate, precision=precision,
                preprocess=preprocess, labels=_labels(labels), top_k=top_k,
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
        ["VERSION", "FORMAT", "SIZE", "DIGEST", "ALIASES", "DESCRIPTION", "TAGS", "CREATED",
         "BY"],
        [
            [
                v["version"],
                v["source_format"],
                human_size(v["size"]),
                v["digest"][:12],
                ", ".join(v["aliases"]),
                v["description"],
                " ".join(f"{k}={val}" for k, val in sorted(v["tags"].items())),
                v["created_at"][:16].replace("T", " "),
                v["created_by"],
            ]
            for v in versions
        ],
        title=versions[0]["model"] if versions else ref,
    )  # fmt: skip
    if versions and versions[-1].get("parent"):
        console.print(f"{versions[-1]['ref']} was made from {versions[-1]['parent']}")
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
def optimize(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION to start from")],
    quantize: Annotated[str | None, typer.Option(help="int8 or fp16")] = None,
    level: Annotated[str | None, typer.Option(help="basic, extended or all")] = None,
    auto: Annotated[
        bool,
        typer.Option(
            "--auto",
            help="Try every way (graph optimization, int8 dynamic and "
            "static, fp16, structured pruning) and keep the fastest within "
            "--max-accuracy-drop.",
        ),
    ] = False,
    max_accuracy_drop: Annotated[
        str | None,
        typer.Option(
            help="With --auto: the share of sample rows whose prediction may change "
            "[default: 0.5%]."
        ),
    ] = None,
    samples: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Inputs to calibrate and measure on "
            "(.npz or JSON); default: the samples pushed with the version.",
        ),
    ] = None,
    deploy: Annotated[
        bool,
        typer.Option(
            "--deploy",
            help="Deploy the new version (under the deployment's rollout policy, if it has one).",
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Make a faster version: graph optimization and/or quantization, or --auto, measured and
    reported."""
    name, sep, version = ref.partition(":")
    if not sep or not version.isdigit():
        raise typer.BadParameter("use NAME:VERSION, for example mlp:1")
    if not auto and max_accuracy_drop is not None:
        raise typer.BadParameter("--max-accuracy-drop goes with --auto")
    budget = _budget(max_accuracy_drop or "0.5%")
    with handled(), Client() as client:
        with console.status("optimizing") as status:
            result = client.optimize(
                name, int(version), level=level, quantize=quantize, auto=auto,
                max_accuracy_drop=budget, samples=samples,
                on_stage=lambda stage: status.update(f"{stage}..."),
            )  # fmt: skip
        if as_json:
            _print_json(result)
        else:
            console.print(f"created [bold]{result['ref']}[/bold] from {ref} "
                          f"({result['description']})")  # fmt: skip
            if report := result.get("report"):
                print_report(report)
        if deploy and as_json:  # the JSON above stays the only output
            client.deploy(result["ref"])
        elif deploy:
            announce(client, client.deploy(result["ref"], wait=False), wait=True, timeout=120.0)


def _budget(text: str) -> float:
    """``0.5%`` as 0.005; a bare number is refused (is 0.5 half a percent or a half?)."""
    if not text.strip().endswith("%"):
        raise typer.BadParameter(f"write it as a percentage, e.g. 0.5%: {text!r}",
                                 param_hint="--max-accuracy-drop")  # fmt: skip
    try:
        return parse_share(text, "--max-accuracy-drop")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-accuracy-drop") from None


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
