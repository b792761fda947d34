"""Admin commands: admin rotate-master-key."""

from __future__ import annotations

from modelplane.cli.apps import admin_app
from modelplane.cli.output import console, handled
from modelplane.client import Client


@admin_app.command("rotate-master-key")
def rotate_master_key() -> None:
    """Re-wrap every blob's data key under a new master key (the server keeps serving)."""
    with handled(), Client() as client:
        result = client.rotate_master_key()
    console.print(
        f"master key rotated: {result['rewrapped']} data key(s) re-wrapped (check value "
        f"{result['master_key_check']}); back up the new master key file"
    )
