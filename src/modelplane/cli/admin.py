"""Admin commands: admin rotate-master-key, backup, restore."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from modelplane import backups, errors
from modelplane.cli.apps import admin_app
from modelplane.cli.output import console, handled
from modelplane.client import Client
from modelplane.security.blobkeys import (
    ENV_SOURCE,
    MasterKey,
    MasterKeyError,
    load_master_key,
    read_master_key,
)


@admin_app.command("rotate-master-key")
def rotate_master_key() -> None:
    """Re-wrap every blob's data key under a new master key (the server keeps serving)."""
    with handled(), Client() as client:
        result = client.rotate_master_key()
    console.print(
        f"master key rotated: {result['rewrapped']} data key(s) re-wrapped (check value "
        f"{result['master_key_check']}); back up the new master key file"
    )


def _progress(label: str, total: int | None = None) -> Progress:
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), console=console, transient=True,
    )  # fmt: skip
    progress.add_task(label, total=total)
    return progress


@admin_app.command("backup")
def backup(
    file: Annotated[Path, typer.Argument(help="The archive to write (a new file).")],
) -> None:
    """Write a backup of the server (database and sealed blobs, never the master key) to FILE,
    taken while it serves. Embedded default (SQLite, local folder) only."""
    with handled(), Client() as client, _progress("receiving") as progress:
        manifest = client.backup(
            file, lambda got: progress.update(progress.task_ids[0], completed=got)
        )
    size = file.stat().st_size
    console.print(
        f"backup written: {file} ({manifest['versions']} version(s) of {manifest['models']} "
        f"model(s), {len(manifest['blobs'])} blob(s), {size / 1e6:.1f} MB); it holds no master "
        "key: keep that apart, restore with `modelplane admin restore`",
        highlight=False,
    )


def _master_key(path: Path | None) -> MasterKey:
    try:
        if path is not None:
            return read_master_key(path)
        secret = os.environ.get(ENV_SOURCE)
        if not secret:
            raise errors.InvalidInput(
                "give the master key the backup's blobs were sealed under: --master-key-file "
                f"(the old server's master.key) or {ENV_SOURCE}"
            )
        return load_master_key(Path(os.devnull), secret)[0]
    except FileNotFoundError:
        raise errors.InvalidInput(f"{path} does not exist") from None
    except MasterKeyError as exc:
        raise errors.InvalidInput(str(exc)) from None


@admin_app.command("restore")
def restore(
    file: Annotated[Path, typer.Argument(help="An archive `modelplane admin backup` wrote.")],
    home: Annotated[Path, typer.Option(help="The new server's home: a new or empty folder.")],
    master_key_file: Annotated[
        Path | None,
        typer.Option(
            help="The master key file; it is copied into the new home as master.key. "
            f"Default: {ENV_SOURCE}"
        ),
    ] = None,
) -> None:
    """Unpack a backup into a new home, checking every blob against its digest under the
    master key first; then start a server on it (`MODELPLANE_HOME=DIR modelplane serve`)."""
    with handled():
        master = _master_key(master_key_file)
        manifest = backups.read_manifest(file)
        total = sum(blob["size"] for blob in manifest["blobs"])
        with _progress("checking blobs", total) as progress:
            [task] = progress.task_ids
            done = 0

            def checked(size: int) -> None:
                nonlocal done
                done += size
                progress.update(task, completed=done)

            backups.restore(file, home, master, master_key_file is not None, checked)
    console.print(
        f"restored {manifest['versions']} version(s) of {manifest['models']} model(s) from "
        f"{manifest['created']} into {home}, every blob checked; start it with "
        f"MODELPLANE_HOME={home} modelplane serve (the keys of the old server work; admin.key "
        "is not in a backup)",
        highlight=False,
    )
