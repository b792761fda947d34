"""Reading collected logs back: filter by replica, time and level; follow new lines."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from modelplane.errors import InvalidInput
from modelplane.telemetry.logs import LEVELS

DURATION = re.compile(r"^(\d+)([smhd])$")
TAIL_BYTES = 1 << 16  # longer than any one log line
POLL_BYTES = 16 << 20  # the most read from one file per poll
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """``10m``, ``2h``, ``30s``, ``1d`` or an ISO 8601 time."""
    if not text:
        return None
    if match := DURATION.match(text):
        return now - timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"invalid since {text!r}: use 30s, 10m, 2h, 1d or an ISO time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class LogFilter:
    replica: str | None = None
    since: datetime | None = None
    level: str | None = None

    def __post_init__(self) -> None:
        if self.level is not None and self.level not in LEVELS:
            raise InvalidInput(f"invalid level {self.level!r}; use one of {', '.join(LEVELS)}")

    def keep(self, record: dict[str, Any]) -> bool:
        if self.replica and record.get("replica") != self.replica:
            return False
        if self.level and LEVELS.index(record.get("level", "info")) < LEVELS.index(self.level):
            return False
        if self.since is not None:
            try:
                stamp = datetime.fromisoformat(str(record.get("time", "")).replace("Z", "+00:00"))
            except ValueError:
                return False
            if stamp < self.since:
                return False
        return True


def _files(folder: Path) -> list[Path]:
    """Log files oldest first: rotated ones (.N, higher is older), then the current ones."""
    rotated = sorted(folder.glob("*.log.*"), key=lambda p: -int(p.suffix[1:] or 0))
    return [p for p in rotated if p.suffix[1:].isdigit()] + sorted(folder.glob("*.log"))


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read(
    folder: Path,
    where: LogFilter,
    limit: int = 200,
    upto: Mapping[Path, tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """The newest ``limit`` records that ``where`` keeps. With ``upto`` (a follower's starting
    positions), current files are read only up to them, so that what follows is neither lost
    between the two nor given twice."""
    records = []
    followed = dict((upto or {}).values())  # inode -> offset
    for path in _files(folder) if folder.is_dir() else []:
        with path.open("rb") as f:
            lines: Iterable[bytes] = f
            if upto is not None:
                offset = followed.get(os.fstat(f.fileno()).st_ino)
                if offset is not None:  # followed from there on (rotated since, or not)
                    lines = f.read(offset).splitlines()
                elif path.suffix == ".log":  # new since the follower started: all its own
                    continue
            for line in lines:
                record = _parse(line)
                if record is not None and where.keep(record):
                    records.append(record)
    records.sort(key=lambda r: str(r.get("time", "")))
    return records[-limit:]


class LogReader:
    """Follows one log file through rotation (``r.log`` -> ``r.log.1``), returning whole lines
    written since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._inode: int | None = None
        self._offset = 0

    @property
    def position(self) -> tuple[int, int] | None:
        """(inode, offset) read up to, once known."""
        return None if self._inode is None else (self._inode, self._offset)

    def start_at_end(self) -> None:
        """Skip what is there: start after the last complete line (one being written is read)."""
        try:
            with self.path.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read()
                self._inode = os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            return
        self._offset = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else size

    def read(self, limit: int) -> bytes:
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            return b""
        data = b""
        if self._inode is not None and inode != self._inode:
            # rotated: finish the old file (now .1) first, then start the new one
            data = self._chunk(self.path.with_name(self.path.name + ".1"), limit)
            self._offset = 0
        self._inode = inode
        return data + self._chunk(self.path, limit - len(data))

    def _chunk(self, path: Path, limit: int) -> bytes:
        if limit <= 0:
            return b""
        try:
            with path.open("rb") as f:
                f.seek(self._offset)
                data = f.read(limit)
        except FileNotFoundError:
            return b""
        end = data.rfind(b"\n") + 1  # whole lines only; the rest comes next time
        self._offset += end
        return data[:end]


@dataclass
class Follower:
    """Yields records appended to a deployment's current log files since the last call."""

    folder: Path
    where: LogFilter
    readers: dict[Path, LogReader] = field(default_factory=dict)

    def start_at_end(self) -> None:
        for path in self.folder.glob("*.log"):
            self.readers[path] = reader = LogReader(path)
            reader.start_at_end()

    @property
    def positions(self) -> dict[Path, tuple[int, int]]:
        """Where each file's following starts (for ``read``'s ``upto``)."""
        return {p: pos for p, r in self.readers.items() if (pos := r.position) is not None}

    def poll(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.folder.glob("*.log")):
            reader = self.readers.get(path) or self.readers.setdefault(path, LogReader(path))
            for line in reader.read(POLL_BYTES).splitlines():
                record = _parse(line)
                if record is not None and self.where.keep(record):
                    yield record
