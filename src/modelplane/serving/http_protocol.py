"""uvicorn's httptools protocol with one send per response.

uvicorn writes a response's status line and headers as soon as the app starts it, and the body
when the app sends it: two system calls, and the client wakes twice (the first read holds no
body). Here the writes of one turn of the event loop are gathered and leave together when it
ends, so a response is one send; everything else is uvicorn's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelplane.serving.writes import CoalescingWriter


class _GatheringTransport:
    """A transport whose writes wait for the end of the loop's turn (the gateway-replica
    connections' ``CoalescingWriter``); the rest is the wrapped transport's. Closing (or handing
    the connection to another protocol) writes out first."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._writer = CoalescingWriter(transport)
        self.write = self._writer.write  # no extra call per write

    def close(self) -> None:
        self._writer.flush()
        self._transport.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._writer.flush()
        self._transport.set_protocol(protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatheringHttpProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's own signature narrows BaseTransport to Transport the same way
        gathering: Any = _GatheringTransport(transport)
        super().connection_made(gathering)
