"""The replica's listener: frames in, frames out, over a Unix socket or TCP.

The first frame on a connection must be HELLO carrying the gateway's token; anything else closes
the connection.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import cast

from modelplane.protocol import frames, v2
from modelplane.serving.dataplane import DataPlane
from modelplane.serving.writes import CoalescingWriter

log = logging.getLogger("modelplane.replica")


class ReplicaProtocol(asyncio.Protocol):
    def __init__(self, plane: DataPlane, token: bytes) -> None:
        self._plane = plane
        self._token = token
        self._reader = frames.request_reader()
        self._transport: asyncio.Transport | None = None
        self._writer: CoalescingWriter | None = None
        self._greeted = False
        self._tasks: set[asyncio.Task[None]] = set()

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
            task = asyncio.ensure_future(self._answer(frame))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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

    def _send(self, response: frames.ResponseFrame) -> None:
        if self._writer is not None:
            self._writer.write(frames.encode_response(response))

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._writer = None
