"""The gateway's side of the framing: one persistent, multiplexed connection per replica."""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import AsyncGenerator
from typing import cast

from modelplane.protocol import frames
from modelplane.security.replica_tls import REPLICA_NAME
from modelplane.serving.writes import CoalescingWriter


class ReplicaGone(Exception):
    """The connection closed before the replica answered; safe to retry elsewhere."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.writer: CoalescingWriter | None = None
        self.pending: dict[int, asyncio.Future[frames.ResponseFrame]] = {}
        # GENERATE streams: each frame for the id goes to its queue; None: the connection is gone
        self.streams: dict[int, asyncio.Queue[frames.ResponseFrame | None]] = {}
        self._reader = frames.response_reader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self.writer = CoalescingWriter(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            received = self._reader.feed(data)
        except ValueError:
            if self.transport is not None:
                self.transport.close()
            return
        for frame in received:
            future = self.pending.pop(frame.id, None)
            if future is not None:
                if not future.done():
                    future.set_result(frame)
                continue
            stream = self.streams.get(frame.id)
            if stream is not None:
                stream.put_nowait(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.writer = None
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ReplicaGone("the replica closed the connection"))
        for stream in self.streams.values():
            stream.put_nowait(None)


def _expire(future: asyncio.Future[frames.ResponseFrame]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class ReplicaConnection:
    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol
        self._ids = itertools.count(1)

    @property
    def open(self) -> bool:
        transport = self._protocol.transport
        return transport is not None and not transport.is_closing()

    @classmethod
    async def connect(
        cls, url: str, token: str, timeout: float = 5.0, tls: ssl.SSLContext | None = None
    ) -> ReplicaConnection:
        """Connect and present ``token``: ``unix:PATH``, ``tcp://HOST:PORT``, or
        ``tls://HOST:PORT`` (the replica's certificate checked with ``tls``)."""
        loop = asyncio.get_running_loop()
        try:
            if url.startswith("unix:"):
                connecting = loop.create_unix_connection(_Protocol, url[5:])
            elif url.startswith("tls://"):
                if tls is None:
                    raise ReplicaGone("a tls:// replica needs the executor's TLS context")
                host, _, port = url.removeprefix("tls://").rpartition(":")
                connecting = loop.create_connection(
                    _Protocol, host, int(port), ssl=tls, server_hostname=REPLICA_NAME,
                    ssl_handshake_timeout=timeout,
                )  # fmt: skip
            else:
                host, _, port = url.removeprefix("tcp://").rpartition(":")
                connecting = loop.create_connection(_Protocol, host, int(port))
            _, protocol = await asyncio.wait_for(connecting, timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            raise ReplicaGone(f"cannot connect to the replica: {exc}") from None
        connection = cls(protocol)
        try:
            hello = await connection.request(frames.HELLO, token.encode(), None, 0, timeout)
        except (ReplicaGone, TimeoutError):
            # a hung replica: the kernel accepts the connection, nobody answers on it
            connection.close()
            raise ReplicaGone(f"the replica did not answer within {timeout:g}s") from None
        if hello.status != 200:
            connection.close()
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
        transport, writer = protocol.transport, protocol.writer
        if transport is None or writer is None or transport.is_closing():
            raise ReplicaGone("the connection to the replica is closed")
        rid = next(self._ids) & 0xFFFFFFFF
        loop = asyncio.get_running_loop()
        future: asyncio.Future[frames.ResponseFrame] = loop.create_future()
        protocol.pending[rid] = future
        writer.write(
            frames.encode_request(
                frames.RequestFrame(rid, op, timeout_ms, header_len, payload, request_id)
            )
        )
        # a timer on the future itself: asyncio.wait_for would add a waiter future, two
        # callbacks and an extra turn of the loop to every request
        timer = None if timeout_s is None else loop.call_later(timeout_s, _expire, future)
        try:
            return await future
        finally:
            protocol.pending.pop(rid, None)
            if timer is not None:
                timer.cancel()

    async def stream(
        self,
        op: int,
        payload: bytes,
        timeout_ms: int,
        request_id: str = "",
        idle_s: float | None = None,
    ) -> AsyncGenerator[list[frames.ResponseFrame], None]:
        """Send a streaming request and yield its frames, in batches of those that have
        arrived (one when the reader keeps up, more when it falls behind): PARTIAL ones, then
        the final one. Leaving early (the client went away, an error) sends CANCEL, so the
        replica stops. Nothing for ``idle_s`` seconds raises TimeoutError (and cancels)."""
        protocol = self._protocol
        writer = protocol.writer
        if writer is None or protocol.transport is None or protocol.transport.is_closing():
            raise ReplicaGone("the connection to the replica is closed")
        rid = next(self._ids) & 0xFFFFFFFF
        queue: asyncio.Queue[frames.ResponseFrame | None] = asyncio.Queue()
        protocol.streams[rid] = queue
        writer.write(
            frames.encode_request(
                frames.RequestFrame(rid, op, timeout_ms, None, payload, request_id)
            )
        )
        finished = False
        try:
            while True:
                async with asyncio.timeout(idle_s):
                    batch = [await queue.get()]
                while not queue.empty() and batch[-1] is not None:
                    batch.append(queue.get_nowait())
                if batch[-1] is None:
                    finished = True  # nothing to cancel on a closed connection
                    raise ReplicaGone("the replica closed the connection")
                ready = [f for f in batch if f is not None]
                finished = ready[-1].status != frames.PARTIAL
                yield ready
                if finished:
                    return
        finally:
            protocol.streams.pop(rid, None)
            if not finished and protocol.writer is not None:
                protocol.writer.write(
                    frames.encode_request(
                        frames.RequestFrame(0, frames.CANCEL, 0, None, frames.cancel_payload(rid))
                    )
                )

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()


async def probe(
    url: str, token: str, timeout: float = 2.0, tls: ssl.SSLContext | None = None
) -> bool:
    """True when the replica at ``url`` answers READY with 200."""
    try:
        connection = await ReplicaConnection.connect(url, token, timeout, tls)
    except ReplicaGone:
        return False
    try:
        response = await connection.request(frames.READY, b"", None, 0, timeout)
        return response.status == 200
    except (ReplicaGone, TimeoutError):
        return False
    finally:
        connection.close()
