"""Stop sequences end a completion and are cut from its text, even when one arrives split
across several tokens; text that could still begin one is held back, then released."""

from __future__ import annotations

from modelplane.serving.generation import StopScanner


def run(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    scanner = StopScanner(stops)
    out = ""
    for piece in pieces:
        out += scanner.feed(piece)
        if scanner.stopped:
            break
    return out + scanner.flush(), scanner.stopped


def test_a_stop_split_across_tokens_is_cut() -> None:
    assert run(("\nuser:",), ["Hello", "!\n", "us", "er:", " more"]) == ("Hello!", True)


def test_a_partial_match_that_does_not_complete_is_released() -> None:
    assert run(("STOP",), ["ST", "ONE"]) == ("STONE", False)


def test_held_text_is_released_at_the_end() -> None:
    assert run(("STOP",), ["abc S", "T"]) == ("abc ST", False)


def test_the_earliest_of_several_stops_wins() -> None:
    assert run(("b", "a"), ["xxab"]) == ("xx", True)


def test_without_stops_text_passes_through() -> None:
    assert run((), ["a", "b"]) == ("ab", False)
