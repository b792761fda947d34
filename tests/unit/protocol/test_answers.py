"""Two versions' answers compared, from the bytes a replica sends (JSON or binary)."""

from __future__ import annotations

import numpy as np

from modelplane.domain.traffic import Agreement
from modelplane.protocol.answers import agreement, decode_outputs
from modelplane.protocol.v2 import InferenceRequest, RequestedOutput, encode_response


def answer(outputs: dict[str, np.ndarray], binary: bool = False) -> dict[str, np.ndarray]:
    wanted = [RequestedOutput(name, binary) for name in outputs]
    request = InferenceRequest({}, outputs=wanted)
    body, header = encode_response("m", "1", request, outputs, list(outputs))
    return decode_outputs(body, header)


def test_answers_decode_the_same_from_json_and_binary() -> None:
    names = np.array([b"setosa", b"virginica", b"versicolor"], dtype=object)
    outputs: dict[str, np.ndarray] = {"label": np.array([0, 2, 1], np.int64),
               "probabilities": np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], np.float32),
               "name": names}  # fmt: skip
    for binary in (False, True):
        got = answer(outputs, binary)
        assert got["label"].tolist() == [0, 2, 1]
        assert got["probabilities"].dtype == np.float32
        np.testing.assert_array_equal(got["probabilities"], outputs["probabilities"])
        as_text = [x if isinstance(x, str) else x.decode() for x in got["name"]]
        assert as_text == ["setosa", "virginica", "versicolor"]


def test_labels_are_compared_as_they_are() -> None:
    current = {"label": np.array([0, 1, 2, 1]), "p": np.zeros((4, 3), np.float32)}
    candidate = {"label": np.array([0, 2, 2, 0]), "p": np.full((4, 3), 0.25, np.float32)}
    assert agreement(current, candidate) == Agreement(4, 2, 0.25)


def test_scores_are_compared_by_their_arg_max() -> None:
    scores = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 2.0, 0.0]], np.float32)
    nudged = scores + 1e-3
    flipped = scores.copy()
    flipped[0] = -flipped[0]
    assert agreement({"s": scores}, {"s": nudged}).disagreeing == 0
    found = agreement({"s": scores}, {"s": flipped})
    assert (found.rows, found.disagreeing, found.max_abs_diff) == (3, 1, 6.0)


def test_a_regression_differs_beyond_tolerance_only() -> None:
    y = np.array([[1.0], [2.0], [3.0]], np.float32)
    close = y * (1 + 1e-5)
    off = y.copy()
    off[1] += 0.5
    assert agreement({"y": y}, {"y": close}).disagreeing == 0
    assert agreement({"y": y}, {"y": off}).disagreeing == 1


def test_answers_of_another_shape_disagree_everywhere() -> None:
    found = agreement({"y": np.zeros((2, 3))}, {"y": np.zeros((2, 4))})
    assert (found.rows, found.disagreeing) == (2, 2)


def test_a_value_gone_nan_is_a_change_even_in_a_regression() -> None:
    current = {"y": np.array([[1.0], [2.0], [3.0]], np.float32)}
    candidate = {"y": np.array([[1.0], [np.nan], [np.inf]], np.float32)}
    seen = agreement(current, candidate)
    assert seen == Agreement(3, 2, 0.0)  # rows 2 and 3 changed; the finite ones agree exactly
