import itertools
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelplane.errors import InvalidInput
from modelplane.telemetry.logquery import Follower, LogFilter, parse_since, read
from modelplane.telemetry.logs import (
    Flusher,
    LogWriter,
    RequestLog,
    Timestamps,
    json_logging,
    now_iso,
)


def record(minutes_ago: int, level: str = "info", replica: str = "r1") -> dict[str, object]:
    stamp = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return {"time": stamp.isoformat(), "level": level, "replica": replica, "message": "m"}


def test_since_accepts_durations_and_times() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since("10m", now) == now - timedelta(minutes=10)
    assert parse_since("2026-01-01T00:00:00Z", now) == now
    with pytest.raises(InvalidInput, match="30s, 10m"):
        parse_since("yesterday", now)
    with pytest.raises(InvalidInput, match="invalid level"):
        LogFilter(level="loud")


def test_writer_rotates_and_reader_filters(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path / "r1.log", max_bytes=400, backups=2)
    for i in range(12):
        writer.write(record(30 - i, "warning" if i % 3 == 0 else "info"))
        writer.flush()
    writer.close()
    assert (tmp_path / "r1.log.1").exists()
    assert not (tmp_path / "r1.log.3").exists()  # capped
    recent = read(tmp_path, LogFilter(since=datetime.now(UTC) - timedelta(minutes=25)))
    assert recent
    assert all(r["time"] >= (datetime.now(UTC) - timedelta(minutes=25)).isoformat() for r in recent)
    warnings = read(tmp_path, LogFilter(level="warning"))
    assert warnings
    assert all(r["level"] == "warning" for r in warnings)
    assert read(tmp_path, LogFilter(replica="other")) == []


def test_follower_sees_only_new_complete_lines(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path / "r1.log")
    writer.write(record(1))
    writer.flush()
    follower = Follower(tmp_path, LogFilter())
    follower.start_at_end()
    assert list(follower.poll()) == []
    writer.write(record(0, "error"))
    writer.flush()
    assert [r["level"] for r in follower.poll()] == ["error"]
    assert list(follower.poll()) == []
    writer.close()


def test_request_log_lines_follow_the_schema(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path / "r.log")
    log = RequestLog(writer, "replica", "iris", "abc")
    log("warning", "req-1", "infer", {"status": 400, "error": 'bad "input"'})
    log("info", "", "infer", {"status": 200})
    writer.close()
    first, second = (json.loads(line) for line in (tmp_path / "r.log").read_text().splitlines())
    assert first["level"] == "warning"
    assert first["request_id"] == "req-1"
    assert first["fields"]["error"] == 'bad "input"'
    assert (first["component"], first["deployment"], first["replica"]) == ("replica", "iris", "abc")
    assert first["time"].endswith("Z")
    assert second["request_id"] is None
    assert set(first) == {"time", "level", "component", "deployment", "replica", "request_id",
                          "message", "fields"}  # fmt: skip


def test_follow_after_backlog_loses_and_repeats_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r1.log"
    writer = LogWriter(path)
    writer.write(record(2, "warning"))
    writer.flush()
    with path.open("ab") as f:  # a line half written when the follower starts
        f.write(b'{"time": "' + datetime.now(UTC).isoformat().encode())
    follower = Follower(tmp_path, LogFilter())
    follower.start_at_end()
    with path.open("ab") as f:
        f.write(b'", "level": "error", "replica": "r1", "message": "m"}\n')
    writer.write(record(0, "critical"))  # written between the follower's start and the backlog
    writer.flush()
    backlog = read(tmp_path, LogFilter(), upto=follower.positions)
    followed = list(follower.poll())
    assert [r["level"] for r in backlog] == ["warning"]
    assert [r["level"] for r in followed] == ["error", "critical"]
    writer.close()


def test_a_file_rotated_after_the_follower_starts_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r1.log"
    writer = LogWriter(path, max_bytes=450, backups=1)
    writer.write(record(3, "warning"))
    writer.flush()
    follower = Follower(tmp_path, LogFilter())
    follower.start_at_end()
    for level in ("info", "error"):  # the second rotates: r1.log is a new file holding one line
        writer.write(record(0, level) | {"message": "x" * 150})
        writer.flush()
    assert (tmp_path / "r1.log.1").exists()
    backlog = read(tmp_path, LogFilter(), upto=follower.positions)
    followed = list(follower.poll())
    assert [r["level"] for r in backlog] == ["warning"]  # up to where following starts
    assert [r["level"] for r in followed] == ["info", "error"]  # r1.log.1's rest, then r1.log
    writer.close()


def test_following_goes_on_across_a_rotation(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path / "r1.log", max_bytes=450, backups=1)
    follower = Follower(tmp_path, LogFilter())
    follower.start_at_end()
    writer.write(record(0, "warning"))
    writer.flush()
    assert [r["level"] for r in follower.poll()] == ["warning"]
    for level in ("info", "error"):  # the second rotates
        writer.write(record(0, level) | {"message": "x" * 150})
        writer.flush()
    assert [r["level"] for r in follower.poll()] == ["info", "error"]
    writer.close()


def flushers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "log-flush"}


def lines_of(path: Path) -> list[dict[str, object]]:
    files = sorted(path.parent.glob(path.name + "*"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_the_flusher_writes_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "r1.log"
    with LogWriter(path) as writer, Flusher(writer, period_s=0.01):
        writer.write(record(0))
        deadline = time.monotonic() + 10
        while not path.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(lines_of(path)) == 1  # flushed without anyone asking


def test_the_flusher_stops_when_asked_and_flushes_the_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "r1.log"
    before = flushers()
    writer = LogWriter(path)
    flusher = Flusher(writer, period_s=3600).start()  # it would not flush on its own for an hour
    assert len(flushers() - before) == 1
    writer.write(record(0, "error"))
    assert path.read_bytes() == b""
    started = time.monotonic()
    flusher.stop()
    assert time.monotonic() - started < 5  # woken, not waiting out its period
    assert flushers() == before  # its thread has ended
    assert [r["level"] for r in lines_of(path)] == ["error"]
    flusher.stop()  # twice is harmless
    with pytest.raises(RuntimeError, match="already started"):
        flusher.start()
    with Flusher(writer, period_s=3600):  # a with block stops it the same way
        writer.write(record(0, "warning"))
    assert flushers() == before
    assert [r["level"] for r in lines_of(path)] == ["error", "warning"]
    writer.close()


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads as often as possible, so that races show."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def test_timestamps_are_right_from_many_threads(busy_switching: None) -> None:
    ticks = itertools.count(1_767_225_599_000)  # a millisecond a call, across second boundaries
    seen = threading.local()

    def clock() -> float:
        seen.milli = next(ticks)
        return float(seen.milli) / 1000

    stamps = Timestamps(clock)
    wrong: list[tuple[str, str]] = []
    threads_n = 8
    together = threading.Barrier(threads_n)

    def use() -> None:
        together.wait()
        for _ in range(10_000):  # enough for an unlocked cache to go wrong, in practice each time
            text = stamps.text()
            expected = datetime.fromtimestamp(seen.milli / 1000, UTC)
            if text != expected.strftime("%Y-%m-%dT%H:%M:%S.") + f"{seen.milli % 1000:03d}Z":
                wrong.append((text, expected.isoformat()))
            if stamps.bytes().decode() < text:  # never behind what this thread already saw
                wrong.append((stamps.bytes().decode(), text))

    threads = [threading.Thread(target=use) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert now_iso() <= Timestamps().text()


def test_concurrent_writers_lose_and_mangle_nothing(tmp_path: Path, busy_switching: None) -> None:
    path = tmp_path / "r1.log"
    threads_n, lines_n = 8, 400
    logger = logging.getLogger("tests.concurrent")
    with (
        LogWriter(path, max_bytes=64 << 10, backups=100) as writer,  # rotating all along
        json_logging(writer, "replica", "m", "r1"),
        Flusher(writer, period_s=0.001),
    ):
        request_log = RequestLog(writer, "replica", "m", "r1")

        def use(thread: int) -> None:
            for i in range(lines_n):
                request_log("info", f"{thread}-{i}", "infer", {"status": 200})
                logger.warning("line %d", i, extra={"request_id": f"{thread}-{i}"})

        threads = [threading.Thread(target=use, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    records = lines_of(path)  # every line whole JSON, nothing lost, nothing twice
    assert len(records) == 2 * threads_n * lines_n
    ids = [str(r["request_id"]) for r in records]
    expected = [f"{t}-{i}" for t in range(threads_n) for i in range(lines_n)]
    assert sorted(ids) == sorted(expected * 2)
    assert all(str(r["time"]).endswith("Z") for r in records)
