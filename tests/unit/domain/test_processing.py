"""Processing declarations: what --preprocess accepts, and the same rules for a declaration read
back from a pushed file's metadata (which modelplane may not have written)."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane.domain.processing import Processing, ProcessingError, parse


def test_a_declaration_round_trips_through_its_document() -> None:
    image = parse("image:resize=32x28,crop=24,mode=L,normalize=none", ["a", "b"], top_k=2)
    audio = parse("audio:rate=8000,seconds=0.5,features=logmel,mels=20", ["tone"])
    assert image is not None
    assert audio is not None
    assert Processing.from_dict(image.to_dict()) == image
    assert Processing.from_dict(audio.to_dict()) == audio


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"image": {"resize": [100000, 100000], "mode": "RGB", "layout": "NCHW",
                    "normalize": "unit"}}, "between 1 and 4096"),
        ({"image": {"resize": [8, 8], "crop": [16, 16], "mode": "RGB", "layout": "NCHW",
                    "normalize": "unit"}}, "larger than resize"),
        ({"audio": {"rate": 16000, "seconds": 1e9}}, "at most 600"),
        ({"audio": {"rate": 16000, "evil": 1}}, "unknown setting 'evil'"),
        ({"image": {"resize": [8, 8]}, "top_k": 0}, "top_k"),
        ({"image": "resize"}, "malformed"),
    ],
)  # fmt: skip
def test_a_forged_declaration_is_refused_by_the_same_rules(
    doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProcessingError, match=message):
        Processing.from_dict(doc)
