import pytest

from modelplane.protocol import frames


def test_request_frames_survive_arbitrary_splits() -> None:
    sent = [
        frames.RequestFrame(1, frames.INFER, 250, 12, b'{"inputs":[]}' + b"\x00" * 8, "req-42"),
        frames.RequestFrame(2, frames.READY, 0, None, b""),
        frames.RequestFrame(0xFFFFFFFF, frames.HELLO, 0, 0, b"token"),
    ]
    stream = b"".join(frames.encode_request(f) for f in sent)
    for step in (1, 3, 7, len(stream)):
        reader = frames.request_reader()
        got = []
        for i in range(0, len(stream), step):
            got.extend(reader.feed(stream[i : i + step]))
        assert got == sent


def test_response_frames_round_trip() -> None:
    frame = frames.ResponseFrame(9, 429, None, b'{"error":"busy"}')
    assert frames.response_reader().feed(frames.encode_response(frame)) == [frame]


def test_a_corrupt_length_is_refused() -> None:
    with pytest.raises(ValueError, match="corrupt frame"):
        frames.request_reader().feed(b"\x00\x00\x00\x01xxxx")
