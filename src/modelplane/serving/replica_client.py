"""The gateway's side of the framing: one persistent, multiplexed connection per replica."""

from __future__ import annotations

import asyncio
import itertools
from typing import cast

from modelplane.protocol import frames


class ReplicaGone(Exception):
    """The connection closed before the replica answered; safe to retry elsewhere."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[frames.ResponseFrame]] = {}
        self._reader = frames.response_reader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            received = self._reader.feed(data)
        except ValueError:
            if self.transport is not None:
                self.transport.close()
            return
        for frame in received:
            future = self.pending.pop(frame.id, None)
            if future is not None and not future.done():
                future.set_result(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ReplicaGone("the replica closed the connection"))


class ReplicaConnection:
    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol
        self._ids = itertools.count(1)

    @property
    def open(self) -> bool:
        transport = self._protocol.transport
        return transport is not None and not transport.is_closing()

    @classmethod
    async def connect(cls, url: str, token: str, timeout: float = 5.0) -> ReplicaConnection:
        loop = asyncio.get_running_loop()
        try:
            if url.startswith("unix:"):
                connecting = loop.create_unix_connection(_Protocol, url[5:])
            else:
                host, _, port = url.removeprefix("tcp://").rpartition(":")
                connecting = loop.create_connection(_Protocol, host, int(port))
            _, protocol = await asyncio.wait_for(connecting, timeout)
        except (OSError, TimeoutError) as exc:
            raise ReplicaGone(f"cannot connect to the replica: {exc}") from None
        connection = cls(protocol)
        hello = await connection.request(frames.HELLO, token.encode(), None, 0, timeout)
        if hello.status != 200:
            raise ReplicaGone("the replica refused the token")
        return connection

    async def request(
        self,
        op: int,
        payload: bytes,
        header_len: int | None,
        timeout_ms: int,
        timeout_s: float | None,
        request_id: str = "",
    ) -> frames.ResponseFrame:
        protocol = self._protocol
        if protocol.transport is None or protocol.transport.is_closing():
            raise ReplicaGone("the connection to the replica is closed")
        rid = next(self._ids) & 0xFFFFFFFF
        future: asyncio.Future[frames.ResponseFrame] = asyncio.get_running_loop().create_future()
        protocol.pending[rid] = future
        protocol.transport.write(
            frames.encode_request(
                frames.RequestFrame(rid, op, timeout_ms, header_len, payload, request_id)
            )
        )
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            protocol.pending.pop(rid, None)

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()


async def probe(url: str, token: str, timeout: float = 2.0) -> bool:
    """True when the replica at ``url`` answers READY with 200."""
    try:
        connection = await ReplicaConnection.connect(url, token, timeout)
    except ReplicaGone:
        return False
    try:
        response = await connection.request(frames.READY, b"", None, 0, timeout)
        return response.status == 200
    except (ReplicaGone, TimeoutError):
        return False
    finally:
        connection.close()
