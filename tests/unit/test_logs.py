from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelplane.errors import InvalidInput
from modelplane.telemetry.logquery import Follower, LogFilter, parse_since, read
from modelplane.telemetry.logs import LogWriter


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
    import json

    from modelplane.telemetry.logs import RequestLog

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
