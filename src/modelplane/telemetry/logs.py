"""Structured JSON logs, one schema for every process:

    {"time", "level", "component", "deployment", "replica", "request_id", "message", "fields"}

``LogWriter`` appends lines to a file with a size cap and rotation (``<file>.1`` ... ``.N``),
buffered so that per-request lines cost a few microseconds; ``Flusher`` writes the buffers out
in the background until it is stopped; ``json_logging`` routes the standard ``logging`` records
through a writer while it is active.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson

LEVELS = ("debug", "info", "warning", "error", "critical")
FLUSH_LINES = 512  # a writer flushes when this many lines wait (and every quarter second)
FLUSH_BYTES = 64 << 10  # or this many bytes (payload lines can be large)
FLUSH_PERIOD_S = 0.25


def now_iso() -> str:
    """UTC time with milliseconds, ``2026-01-01T00:00:00.000Z``."""
    return _format(int(time.time() * 1000))


def _format(milli: int) -> str:
    second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(milli // 1000))
    return f"{second}.{milli % 1000:03d}Z"


class Timestamps:
    """``now_iso`` for the request path: formatted once per millisecond and reused.

    Safe from any thread: the cache is one immutable tuple, read without a lock and replaced
    under one, so a reader never sees one millisecond's text with another's number.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._current: tuple[int, str, bytes] = (-1, "", b"")

    def _now(self) -> tuple[int, str, bytes]:
        milli = int(self._clock() * 1000)
        current = self._current
        if current[0] != milli:
            with self._lock:
                current = self._current
                if current[0] != milli:
                    text = _format(milli)
                    current = self._current = (milli, text, text.encode())
        return current

    def text(self) -> str:
        return self._now()[1]

    def bytes(self) -> bytes:
        return self._now()[2]


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
        if self._file.closed:  # after close: drop, rather than keep growing the buffer
            self._buffer, self._buffered = [], 0
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
        """Write what is buffered and close the file (lines written afterwards are dropped)."""
        with self._lock:
            self._flush_locked()
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Flusher:
    """Flushes writers in the background so that followers see lines within ``period_s``.

    ``start`` and ``stop`` (or a ``with`` block) bound its thread: ``stop`` wakes it, waits for
    it to end and flushes what is left, so no line written before ``stop`` stays buffered.
    """

    def __init__(self, *writers: LogWriter, period_s: float = FLUSH_PERIOD_S) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, e.g. 0.25; got {period_s!r}")
        self._writers = writers
        self._period = period_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("this flusher was already started; make a new one")
        self._thread = threading.Thread(target=self._loop, name="log-flush", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread and flush every writer once more (safe to call twice)."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._flush()

    def _loop(self) -> None:
        while not self._stopping.wait(self._period):
            self._flush()

    def _flush(self) -> None:
        for writer in self._writers:
            writer.flush()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class JsonHandler(logging.Handler):
    def __init__(self, writer: LogWriter, context: dict[str, str | None]) -> None:
        super().__init__()
        self._writer = writer
        self._context = context
        self._timestamps = Timestamps()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self._writer.write({
                "time": self._timestamps.text(), "level": record.levelname.lower(),
                **self._context, "request_id": getattr(record, "request_id", None),
                "message": message, "fields": {"logger": record.name},
            })  # fmt: skip
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self._writer.flush()


@contextmanager
def json_logging(
    writer: LogWriter, component: str, deployment: str | None = None, replica: str | None = None
) -> Iterator[None]:
    """Send this process's logging to ``writer`` in the JSON schema while the block runs."""
    handler = JsonHandler(
        writer, {"component": component, "deployment": deployment, "replica": replica}
    )
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


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
        self._timestamps = Timestamps()

    def __call__(self, level: str, request_id: str | None, message: str, fields: Any) -> None:
        text = self._messages.get(message)
        if text is None:  # setdefault: a thread that loses the race uses the winner's bytes
            text = self._messages.setdefault(message, orjson.dumps(message))
        self._writer.write_line(self._template % (
            self._timestamps.bytes(), self._levels.get(level) or level.encode(),
            orjson.dumps(request_id or None), text, orjson.dumps(fields),
        ))  # fmt: skip
