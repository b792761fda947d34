"""Label agreement in the parity report: ties in a forest's vote are not disagreements."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

from modelplane.convert.parity import compare


def _forest_outputs() -> tuple[dict[str, np.ndarray], np.ndarray]:
    x, y = load_iris(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=2, random_state=0).fit(x, y)
    probs = forest.predict_proba(x).astype(np.float32)
    return {"label": forest.predict(x), "probabilities": probs}, probs


def test_a_tied_vote_broken_the_other_way_still_agrees() -> None:
    expected, probs = _forest_outputs()
    # the other tie-break: the last of the top classes instead of the first
    other = probs.shape[1] - 1 - np.argmax(probs[:, ::-1], axis=1)
    tied = int(np.sum(other != expected["label"]))
    assert tied > 2  # two trees on iris do tie on some rows
    report = compare(expected, {**expected, "label": other}, label_outputs=("label",))
    label = report["outputs"][0]
    assert report["passed"], report
    assert label["label_agreement"] == 1.0
    assert label["tied_rows"] == tied


def test_a_real_disagreement_still_fails() -> None:
    expected, probs = _forest_outputs()
    clear = np.flatnonzero(probs.max(axis=1) == 1.0)  # both trees agree: no tie possible
    wrong = expected["label"].copy()
    wrong[clear[:5]] = (wrong[clear[:5]] + 1) % 3
    report = compare(expected, {**expected, "label": wrong}, label_outputs=("label",))
    label = report["outputs"][0]
    assert not report["passed"]
    assert label["label_agreement"] == (len(wrong) - 5) / len(wrong)
    assert "tied_rows" not in label
