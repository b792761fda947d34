"""The compact framing between gateway and replica: one persistent connection per replica,
many requests in flight on it, answers matched by id. It replaces a second full HTTP parse on
the hot path (see docs/architecture.md for the measurement).

Request:  !I rest | !I id | !B op | !I timeout_ms | !I header_len (NO_HEADER = absent)
          | !B request_id_len | request_id (ASCII) | payload
Response: !I rest | !I id | !H status | !I header_len (NO_HEADER = absent) | payload

``rest`` counts the bytes after itself. For INFER the payload is a V2 REST body as a client sent
it, and ``header_len`` is its Inference-Header-Content-Length; the response mirrors that.

GENERATE streams: the replica answers its id with any number of PARTIAL frames (status 206, a
JSON event each) and then one final frame (any other status). CANCEL carries the id of a
GENERATE to stop (``!I``) and gets no answer; a stream's frames may still be in flight.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

HELLO = 0
INFER = 1
READY = 2
METADATA = 3
STATS = 4
GENERATE = 5
CANCEL = 6
PARTIAL = 206  # a GENERATE stream's event; more frames follow
DRAINING = 421  # the replica is shutting down and did not run the request: send it elsewhere
NO_HEADER = 0xFFFFFFFF
# response status bit: the replica flagged the request's input as an outlier (input_guard=flag);
# the payload then starts with the input's name and a NUL byte
OUTLIER = 0x8000
MAX_FRAME = 1 << 31

_LEN = struct.Struct("!I")
_REQUEST = struct.Struct("!IIBIIB")
_RESPONSE = struct.Struct("!IIHI")


@dataclass(frozen=True, slots=True)
class RequestFrame:
    id: int
    op: int
    timeout_ms: int
    header_len: int | None
    payload: bytes
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class ResponseFrame:
    id: int
    status: int
    header_len: int | None
    payload: bytes


def cancel_payload(stream_id: int) -> bytes:
    return _LEN.pack(stream_id)


def cancelled_id(payload: bytes) -> int | None:
    return _LEN.unpack(payload)[0] if len(payload) == _LEN.size else None


def encode_request(frame: RequestFrame) -> bytes:
    header = NO_HEADER if frame.header_len is None else frame.header_len
    rid = frame.request_id.encode("ascii", "replace")[:255]
    rest = _REQUEST.size - 4 + len(rid) + len(frame.payload)
    head = _REQUEST.pack(rest, frame.id, frame.op, frame.timeout_ms, header, len(rid))
    return head + rid + frame.payload


def encode_response(frame: ResponseFrame) -> bytes:
    header = NO_HEADER if frame.header_len is None else frame.header_len
    rest = _RESPONSE.size - 4 + len(frame.payload)
    return _RESPONSE.pack(rest, frame.id, frame.status, header) + frame.payload


def _request(data: bytes) -> RequestFrame:
    _, rid, op, timeout_ms, header, id_len = _REQUEST.unpack_from(data)
    start = _REQUEST.size + id_len
    request_id = data[_REQUEST.size : start].decode("ascii", "replace")
    return RequestFrame(
        rid, op, timeout_ms, None if header == NO_HEADER else header, data[start:], request_id
    )


def _response(data: bytes) -> ResponseFrame:
    _, rid, status, header = _RESPONSE.unpack_from(data)
    return ResponseFrame(
        rid, status, None if header == NO_HEADER else header, data[_RESPONSE.size :]
    )


T = TypeVar("T")


class FrameReader(Generic[T]):
    """Accumulates bytes from a stream and yields whole frames."""

    def __init__(self, parse: Callable[[bytes], T], minimum: int) -> None:
        self._buffer = bytearray()
        self._parse = parse
        self._minimum = minimum

    def feed(self, data: bytes) -> list[T]:
        buffer = self._buffer
        buffer += data
        frames: list[T] = []
        offset = 0
        while len(buffer) - offset >= 4:
            (rest,) = _LEN.unpack_from(buffer, offset)
            if rest + 4 < self._minimum or rest > MAX_FRAME:
                raise ValueError(f"corrupt frame (length {rest})")
            end = offset + 4 + rest
            if end > len(buffer):
                break
            frames.append(self._parse(bytes(buffer[offset:end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames


def request_reader() -> FrameReader[RequestFrame]:
    return FrameReader(_request, _REQUEST.size)


def response_reader() -> FrameReader[ResponseFrame]:
    return FrameReader(_response, _RESPONSE.size)
