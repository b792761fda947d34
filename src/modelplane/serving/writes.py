"""Frames written to one connection in the same turn of the event loop leave in one write.

A batch of 20 answers finishes at once and wakes 20 tasks; written one by one, that is 20 send
system calls, and as many reads on the other end. Gathered until the loop's next turn, it is one
of each, and the reader parses them all at once.
"""

from __future__ import annotations

import asyncio


class CoalescingWriter:
    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        """Write out what is pending now (also called at the end of the loop's turn)."""
        pending, self._pending = self._pending, []
        if not pending or self._transport.is_closing():
            return  # the connection is gone: its requests fail over, as for any lost write
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)  # one writev with uvloop
