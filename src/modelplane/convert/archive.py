"""Reading uploaded directories (tar, optionally compressed) without letting any member escape
the destination (no absolute paths, no "..", no links, no devices) and without letting a
compression bomb run: the archive is read as a stream, and the bytes it unpacks to are counted
while it is read, against a total and a ratio to the archive's size."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from modelplane.errors import UnsupportedModel

MAX_MEMBERS = 10_000
DEFAULT_RATIO = 100.0
SLACK = 1 << 20  # tar headers and padding, beyond the members' own bytes
COMPRESSIONS: tuple[tuple[bytes, Any], ...] = (
    (b"\x1f\x8b", gzip),
    (b"BZh", bz2),
    (b"\xfd7zXZ\x00", lzma),
)


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    """How much an archive may unpack to: ``max_bytes`` in all, and at most ``max_ratio`` times
    its own size (a few MB of zeros compress a thousandfold)."""

    max_bytes: int
    max_ratio: float = DEFAULT_RATIO

    def cap(self, packed: int) -> int:
        return min(self.max_bytes, int(packed * self.max_ratio))


class _Counted:
    """A read-only stream that refuses to give more than ``cap`` bytes."""

    def __init__(self, inner: IO[bytes], cap: int, limits: UnpackLimits) -> None:
        self._inner = inner
        self._left = cap
        self._limits = limits

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._left -= len(data)
        if self._left < 0:
            raise _too_large(self._limits)
        return data


def _too_large(limits: UnpackLimits) -> UnsupportedModel:
    return UnsupportedModel(
        f"the archive unpacks to more than {limits.max_bytes} bytes or more than "
        f"{limits.max_ratio:g} times its own size; it was refused while unpacking"
    )


@contextlib.contextmanager
def _stream(archive: Path, limits: UnpackLimits) -> Iterator[tarfile.TarFile]:
    """The archive as a tar stream (never seeking back), its unpacked bytes counted."""
    with archive.open("rb") as f:
        head = f.read(8)
    packed = archive.stat().st_size
    module = next((m for magic, m in COMPRESSIONS if head.startswith(magic)), None)
    try:
        with contextlib.ExitStack() as stack:
            raw: IO[bytes] = stack.enter_context(
                module.open(archive, "rb") if module is not None else archive.open("rb")
            )
            counted: Any = _Counted(raw, limits.cap(packed) + SLACK, limits)
            yield stack.enter_context(tarfile.open(fileobj=counted, mode="r|"))
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as exc:
        raise UnsupportedModel(f"the archive could not be read ({type(exc).__name__})") from None


def _members(
    tar: tarfile.TarFile, archive: Path, limits: UnpackLimits
) -> Iterator[tarfile.TarInfo]:
    """Each member, checked, with the running total of declared sizes bounded (so a member too
    large is refused before a byte of it is written)."""
    cap, total = limits.cap(archive.stat().st_size), 0
    for count, member in enumerate(tar, start=1):
        if count > MAX_MEMBERS:
            raise UnsupportedModel(f"the archive has over {MAX_MEMBERS} entries")
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts:
            raise UnsupportedModel(f"archive entry {member.name!r} points outside the upload")
        if not (member.isfile() or member.isdir()) or member.issparse():
            raise UnsupportedModel(
                f"archive entry {member.name!r} is a link or special file; upload plain files only"
            )
        total += member.size
        if total > cap:
            raise _too_large(limits)
        yield member


def is_archive(path: Path) -> bool:
    """Whether the file is a tar (optionally compressed): only its first block is read."""
    try:
        with _stream(path, UnpackLimits(1 << 20, 1e9)) as tar:
            return tar.next() is not None
    except UnsupportedModel:
        return False


def member_names(
    archive: Path, limits: UnpackLimits, enough: Callable[[set[str]], bool]
) -> set[str]:
    """The archive's file names (without folders), read until ``enough`` says so."""
    names: set[str] = set()
    with _stream(archive, limits) as tar:
        for member in _members(tar, archive, limits):
            names.add(member.name.rsplit("/", 1)[-1])
            if enough(names):
                break
    return names


def extract(archive: Path, destination: Path, limits: UnpackLimits) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    with _stream(archive, limits) as tar:
        for member in _members(tar, archive, limits):
            target = (root / member.name).resolve()
            if not target.is_relative_to(root):
                raise UnsupportedModel(f"archive entry {member.name!r} points outside the upload")
            try:
                tar.extract(member, root, filter="data")
            except tarfile.FilterError:
                raise UnsupportedModel(
                    f"archive entry {member.name!r} points outside the upload"
                ) from None
    return root


def find_root(folder: Path, marker: str) -> Path:
    """The folder inside an unpacked upload that holds ``marker`` (the upload may or may not
    have a top-level directory)."""
    found = sorted(folder.rglob(marker), key=lambda p: len(p.parts))
    if not found:
        raise UnsupportedModel(f"the uploaded directory has no {marker}")
    return found[0].parent
