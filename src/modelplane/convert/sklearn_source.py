"""scikit-learn estimators and pipelines (pickle or joblib files) via skl2onnx.

Loading a pickle runs code, so this only ever runs in the isolated conversion worker and only
when the push said --trust-pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelplane.convert.base import Arrays, Converted, ConvertOptions
from modelplane.errors import UnsupportedModel


def convert(source: Path, workdir: Path, options: ConvertOptions) -> Converted:
    import joblib
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    if not options.trust_pickle:
        raise UnsupportedModel("refusing to load a pickle without --trust-pickle")
    model: Any = joblib.load(source)
    if not hasattr(model, "predict"):
        raise UnsupportedModel(
            f"the pickle holds a {type(model).__name__}, not a scikit-learn estimator"
        )
    features = getattr(model, "n_features_in_", None)
    if features is None:
        raise UnsupportedModel("the estimator is not fitted (it has no n_features_in_)")
    classifier = hasattr(model, "predict_proba")
    options_map = {id(model): {"zipmap": False}} if classifier else None
    try:
        onx = convert_sklearn(
            model,
            initial_types=[("input", FloatTensorType([None, int(features)]))],
            options=options_map,
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    except Exception as exc:
        raise UnsupportedModel(f"skl2onnx cannot convert this estimator: {exc}") from None
    path = workdir / "model.onnx"
    path.write_bytes(onx.SerializeToString())
    names = [o.name for o in onx.graph.output]

    def original(inputs: Arrays) -> Arrays:
        x = inputs["input"]
        if classifier:
            return {names[0]: np.asarray(model.predict(x)), names[1]: model.predict_proba(x)}
        return {names[0]: np.asarray(model.predict(x)).reshape(len(x), -1)}

    return Converted(path, original, label_outputs=(names[0],) if classifier else ())
