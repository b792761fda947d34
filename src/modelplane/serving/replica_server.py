"""The replica's listener: frames in, frames out, over a Unix socket or TCP.

The first frame on a connection must be HELLO carrying the gateway's token; anything else closes
the connection.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from modelplane.protocol import frames, v2
from modelplane.serving.writes import CoalescingWriter

log = logging.getLogger("modelplane.replica")

Emit = Callable[[frames.ResponseFrame], None]


class Plane(Protocol):
    """What a replica serves: one-shot frames, and GENERATE streams (each event emitted as a
    PARTIAL frame, then the final one)."""

    name: str
    version: str
    ready: bool  # what READY frames answer

    async def handle(self, frame: frames.RequestFrame) -> frames.ResponseFrame: ...

    def generate(
        self, frame: frames.RequestFrame, emit: Emit
    ) -> Coroutine[Any, Any, frames.ResponseFrame]: ...


class Drain:
    """The replica's requests in flight over all its connections, and whether it is shutting
    down (SIGTERM): then it runs no new request, and is done once those in flight are answered."""

    def __init__(self) -> None:
        self.draining = False
        self.busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.busy += 1
        self._idle.clear()

    def leave(self, _: object = None) -> None:
        self.busy -= 1
        if self.busy == 0:
            self._idle.set()

    async def finished(self, timeout_s: float) -> bool:
        """Whether every request in flight was answered within ``timeout_s``."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


SHUTTING_DOWN = v2.error_body("the replica is shutting down; the gateway sends this elsewhere",
                              "unavailable")  # fmt: skip


class ReplicaProtocol(asyncio.Protocol):
    def __init__(self, plane: Plane, token: bytes, drain: Drain | None = None) -> None:
        self._plane = plane
        self._token = token
        self._drain = drain or Drain()
        self._reader = frames.request_reader()
        self._transport: asyncio.Transport | None = None
        self._writer: CoalescingWriter | None = None
        self._greeted = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: dict[int, asyncio.Task[None]] = {}  # GENERATE id -> its task

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)
        self._writer = CoalescingWriter(self._transport)

    def data_received(self, data: bytes) -> None:
        try:
            received = self._reader.feed(data)
        except ValueError:
            log.warning("closing a connection that sent a corrupt frame")
            self._close()
            return
        for frame in received:
            if not self._greeted:
                if frame.op != frames.HELLO or not hmac.compare_digest(frame.payload, self._token):
                    log.warning("closing a connection without the right token")
                    self._close()
                    return
                self._greeted = True
                self._send(frames.ResponseFrame(frame.id, 200, None, b""))
                continue
            if frame.op == frames.CANCEL:
                stream_id = frames.cancelled_id(frame.payload)
                running = self._streams.get(stream_id) if stream_id is not None else None
                if running is not None:
                    running.cancel()
                continue
            work = frame.op in (frames.INFER, frames.GENERATE)
            if work and self._drain.draining:
                self._send(frames.ResponseFrame(frame.id, frames.DRAINING, None, SHUTTING_DOWN))
                continue
            if frame.op == frames.GENERATE:
                task = asyncio.ensure_future(self._stream(frame))
                self._streams[frame.id] = task
                task.add_done_callback(functools.partial(self._forget, frame.id))
            else:
                task = asyncio.ensure_future(self._answer(frame))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if work:
                self._drain.enter()
                task.add_done_callback(self._drain.leave)

    async def _answer(self, frame: frames.RequestFrame) -> None:
        try:
            response = await self._plane.handle(frame)
        except Exception:
            log.exception("request failed")
            response = frames.ResponseFrame(
                frame.id,
                500,
                None,
                v2.error_body("the model failed while running this request", "internal"),
            )
        self._send(response)

    def _forget(self, stream_id: int, _: object) -> None:
        self._streams.pop(stream_id, None)

    async def _stream(self, frame: frames.RequestFrame) -> None:
        try:
            response = await self._plane.generate(frame, self._send)
        except asyncio.CancelledError:
            return  # cancelled by the gateway (its client went away): nobody waits for more
        except Exception:
            log.exception("generation failed")
            response = frames.ResponseFrame(
                frame.id, 500, None,
                v2.error_body("the model failed while generating", "internal"),
            )  # fmt: skip
        self._send(response)

    def _send(self, response: frames.ResponseFrame) -> None:
        if self._writer is not None:
            self._writer.write(frames.encode_response(response))

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._writer = None
        for task in list(self._streams.values()):  # the gateway is gone: free their slots
            task.cancel()
