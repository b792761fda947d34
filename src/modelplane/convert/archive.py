"""Unpacking uploaded directories (tar, optionally compressed) without letting any member
escape the destination: no absolute paths, no "..", no links, no devices, bounded size."""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from modelplane.errors import UnsupportedModel

MAX_MEMBERS = 10_000


def extract(archive: Path, destination: Path, max_bytes: int) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    total = 0
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        if len(members) > MAX_MEMBERS:
            raise UnsupportedModel(f"the archive has over {MAX_MEMBERS} entries")
        for member in members:
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts:
                raise UnsupportedModel(f"archive entry {member.name!r} points outside the upload")
            if not (member.isfile() or member.isdir()):
                raise UnsupportedModel(
                    f"archive entry {member.name!r} is a link or special file; upload plain "
                    "files only"
                )
            target = (root / name).resolve()
            if not target.is_relative_to(root):
                raise UnsupportedModel(f"archive entry {member.name!r} points outside the upload")
            total += member.size
            if total > max_bytes:
                raise UnsupportedModel(f"the unpacked archive is larger than {max_bytes} bytes")
        tar.extractall(root, members=members, filter="data")
    return root


def find_root(folder: Path, marker: str) -> Path:
    """The folder inside an unpacked upload that holds ``marker`` (the upload may or may not
    have a top-level directory)."""
    found = sorted(folder.rglob(marker), key=lambda p: len(p.parts))
    if not found:
        raise UnsupportedModel(f"the uploaded directory has no {marker}")
    return found[0].parent
