"""Structured JSON logs, one schema for every process:

    {"time", "level", "component", "deployment", "replica", "request_id", "message", "fields"}

``LogWriter`` appends lines to a file with a size cap and rotation (``<file>.1`` ... ``.N``),
buffered so that per-request lines cost a few microseconds; ``JsonHandler`` routes the standard
``logging`` records through it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

LEVELS = ("debug", "info", "warning", "error", "critical")
FLUSH_LINES = 512  # a writer flushes when this many lines wait (and every half second)
FLUSH_BYTES = 64 << 10  # or this many bytes (payload lines can be large)


_SECOND: list[Any] = [-1, ""]  # the formatted current second, reused within that second
_MILLI: list[Any] = [-1, "", b""]  # the formatted current millisecond, as text and bytes


def _tick() -> None:
    milli = int(time.time() * 1000)
    if milli != _MILLI[0]:
        second = milli // 1000
        if second != _SECOND[0]:
            _SECOND[0] = second
            _SECOND[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        text = f"{_SECOND[1]}.{milli % 1000:03d}Z"
        _MILLI[0], _MILLI[1], _MILLI[2] = milli, text, text.encode()


def now_iso() -> str:
    """UTC time with milliseconds, ``2026-01-01T00:00:00.000Z`` (cheap: on the request path,
    formatted once per millisecond)."""
    _tick()
    return str(_MILLI[1])


def now_iso_bytes() -> bytes:
    _tick()
    return bytes(_MILLI[2])


class LogWriter:
    def __init__(self, path: Path, max_bytes: int = 10 << 20, backups: int = 3) -> None:
        self.path = path
        self._max = max_bytes
        self._backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")
        self._size = self._file.tell()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        self.write_line(orjson.dumps(record) + b"\n")

    def write_line(self, line: bytes) -> None:
        """Append one ready JSON line (ending in a newline)."""
        with self._lock:
            self._buffer.append(line)
            self._buffered += len(line)
            if len(self._buffer) >= FLUSH_LINES or self._buffered >= FLUSH_BYTES:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buffer:
            return
        lines, self._buffer, self._buffered = self._buffer, [], 0
        data = b"".join(lines)
        if self._size + len(data) > self._max:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("ab")
        self._size = 0

    def close(self) -> None:
        self.flush()
        self._file.close()


class JsonHandler(logging.Handler):
    def __init__(self, writer: LogWriter, context: dict[str, str | None]) -> None:
        super().__init__()
        self._writer = writer
        self._context = context

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self._writer.write({
                "time": now_iso(), "level": record.levelname.lower(), **self._context,
                "request_id": getattr(record, "request_id", None), "message": message,
                "fields": {"logger": record.name},
            })  # fmt: skip
        except Exception:
            self.handleError(record)


def configure(
    writer: LogWriter, component: str, deployment: str | None = None, replica: str | None = None
) -> None:
    """Send this process's logging to ``writer`` in the JSON schema (called once, at start)."""
    handler = JsonHandler(
        writer, {"component": component, "deployment": deployment, "replica": replica}
    )
    logging.getLogger().addHandler(handler)


def flush_every(writer: LogWriter, seconds: float = 0.25) -> threading.Thread:
    """Flush buffered lines in the background so followers see them within ``seconds``."""

    def loop() -> None:
        while True:
            time.sleep(seconds)
            writer.flush()

    thread = threading.Thread(target=loop, name="log-flush", daemon=True)
    thread.start()
    return thread


class RequestLog:
    """The per-request line of a replica, filled into a pre-serialized template (the hot path)."""

    def __init__(self, writer: LogWriter, component: str, deployment: str, replica: str) -> None:
        self._writer = writer
        context = orjson.dumps({"component": component, "deployment": deployment,
                                "replica": replica})[1:-1]  # fmt: skip
        self._template = (
            b'{"time":"%b","level":"%b",' + context
            + b',"request_id":%b,"message":%b,"fields":%b}\n'
        )  # fmt: skip
        self._levels = {level: level.encode() for level in LEVELS}
        self._messages: dict[str, bytes] = {}

    def __call__(self, level: str, request_id: str | None, message: str, fields: Any) -> None:
        text = self._messages.get(message)
        if text is None:
            text = self._messages[message] = orjson.dumps(message)
        self._writer.write_line(self._template % (
            now_iso_bytes(), self._levels.get(level) or level.encode(),
            orjson.dumps(request_id or None), text, orjson.dumps(fields),
        ))  # fmt: skip
