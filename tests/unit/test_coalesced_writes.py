"""Writes gathered per turn of the event loop: frames between gateway and replica, and the two
halves (head, body) of an HTTP response."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelplane.protocol import frames
from modelplane.serving.heap import release_freed_memory
from modelplane.serving.http_protocol import _GatheringTransport
from modelplane.serving.replica_client import ReplicaConnection, _Protocol
from modelplane.serving.writes import CoalescingWriter


class RecordingTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, data: list[bytes]) -> None:
        self.calls.append(("writelines", list(data)))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name == "sockname" else default


async def _next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_writes_of_one_turn_leave_in_one_call() -> None:
    transport = RecordingTransport()
    writer = CoalescingWriter(transport)  # type: ignore[arg-type]
    for part in (b"a", b"b", b"c"):
        writer.write(part)
    assert transport.calls == []  # nothing before the turn ends
    await _next_turn()
    assert transport.calls == [("writelines", [b"a", b"b", b"c"])]
    writer.write(b"d")
    await _next_turn()
    assert transport.calls[-1] == ("write", b"d")


async def test_writes_to_a_closed_connection_are_dropped() -> None:
    transport = RecordingTransport()
    writer = CoalescingWriter(transport)  # type: ignore[arg-type]
    writer.write(b"a")
    transport.closing = True
    await _next_turn()
    assert transport.calls == []


async def test_an_http_response_is_one_send_and_close_writes_out_first() -> None:
    transport = RecordingTransport()
    gathering = _GatheringTransport(transport)  # type: ignore[arg-type]
    gathering.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    gathering.write(b"{}")
    await _next_turn()
    assert transport.calls == [
        ("writelines", [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"{}"])
    ]
    gathering.write(b"last")
    gathering.close()
    assert transport.calls[-2:] == [("write", b"last"), ("close", None)]
    assert gathering.get_extra_info("sockname") == ("127.0.0.1", 8000)  # the rest: forwarded


async def test_a_request_the_replica_never_answers_times_out() -> None:
    protocol = _Protocol()
    protocol.connection_made(RecordingTransport())  # type: ignore[arg-type]
    connection = ReplicaConnection(protocol)
    with pytest.raises(TimeoutError):
        await connection.request(frames.READY, b"", None, 0, 0.01)
    assert protocol.pending == {}  # forgotten, so a late answer is ignored


def test_heap_housekeeping_is_harmless_to_call_again() -> None:
    for _ in range(2):
        release_freed_memory()
