"""Declarative state: ``apply -f SPEC`` and ``export``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from modelplane import errors, spec
from modelplane.cli.apps import app
from modelplane.cli.output import console, handled
from modelplane.client import Client
from modelplane.spec_plan import Planner
from modelplane.spec_plan import export as export_spec


@app.command()
def apply(
    file: Annotated[
        str, typer.Option("--file", "-f", help="The spec (YAML or JSON); - for stdin.")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the changes; change nothing.")
    ] = False,
    wait: Annotated[bool, typer.Option(help="Wait until changed deployments are ready.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each deployment.")] = 300.0,
) -> None:
    """Make the server match a spec: models (pushed from their files when no version has their
    bytes), aliases, deployments (the settings the spec names) and keys (by name; a created
    key's secret is printed once). Applying the same spec again changes nothing."""
    with handled():
        if file == "-":
            text, base, source = sys.stdin.read(), Path.cwd(), "the spec on stdin"
        else:
            path = Path(file)
            try:
                text = path.read_text()
            except OSError as exc:
                raise errors.InvalidInput(f"cannot read {file}: {exc.strerror}") from None
            base, source = path.resolve().parent, file
        wanted = spec.parse(text, source)
        with Client() as client:
            changes = Planner(client, wanted, base).plan()
            for change in changes:
                console.print(change.line(), highlight=False)
            if not changes:
                console.print("no change")
                return
            if dry_run:
                console.print(f"{len(changes)} change(s); dry run: nothing was changed")
                return
            deployed = []
            for change in changes:
                done = change.run()
                console.print(f"  {done}", highlight=False)
                if change.what.startswith("deployment "):
                    deployed.append(change.what.removeprefix("deployment "))
            if wait:
                for name in deployed:
                    with console.status(f"waiting for {name} to be ready"):
                        client.wait_ready(name, timeout)
            console.print(f"applied {len(changes)} change(s)")


@app.command()
def export(
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    schema: Annotated[
        bool, typer.Option("--schema", help="Print the spec's JSON Schema instead.")
    ] = False,
) -> None:
    """Write the server's state as a spec: `modelplane export | modelplane apply -f -` changes
    nothing."""
    with handled():
        if schema:
            text = spec.schema_text()
        else:
            with Client() as client:
                text = spec.dump(export_spec(client))
        if output is None:
            sys.stdout.write(text)
        else:
            Path(output).write_text(text)
