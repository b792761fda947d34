"""Reading collected logs back: filter by replica, time and level; follow new lines."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from modelplane.errors import InvalidInput
from modelplane.telemetry.logs import LEVELS

DURATION = re.compile(r"^(\d+)([smhd])$")
TAIL_BYTES = 1 << 16  # longer than any one log line
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
    for path in _files(folder) if folder.is_dir() else []:
        with path.open("rb") as f:
            if upto is not None and path.suffix == ".log":
                inode, offset = upto.get(path, (-1, 0))
                # a file new since the follower started is all the follower's
                lines = f.read(offset if os.fstat(f.fileno()).st_ino == inode else 0).splitlines()
            else:
                lines = f.read().splitlines()
        for line in lines:
            record = _parse(line)
            if record is not None and where.keep(record):
                records.append(record)
    records.sort(key=lambda r: str(r.get("time", "")))
    return records[-limit:]


@dataclass
class Follower:
    """Yields lines appended to a deployment's current log files since the last call."""

    folder: Path
    where: LogFilter
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)  # inode, offset

    def start_at_end(self) -> None:
        """Start after the last complete line of each file (a line being written is followed)."""
        for path in self.folder.glob("*.log"):
            with path.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read()
                inode = os.fstat(f.fileno()).st_ino
            offset = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else size
            self.positions[path] = (inode, offset)

    def poll(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.folder.glob("*.log")):
            try:
                stat = path.stat()
            except FileNotFoundError:  # rotated away just now: its successor comes next poll
                continue
            inode, offset = self.positions.get(path, (stat.st_ino, 0))
            if inode != stat.st_ino or stat.st_size < offset:  # rotated: a new file
                offset = 0
            if stat.st_size == offset:
                continue
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(stat.st_size - offset)
            complete = data[: data.rfind(b"\n") + 1]
            self.positions[path] = (stat.st_ino, offset + len(complete))
            for line in complete.splitlines():
                record = _parse(line)
                if record is not None and self.where.keep(record):
                    yield record
