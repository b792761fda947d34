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
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

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
    faithful = _faithful(model)
    final = faithful.steps[-1][1] if hasattr(faithful, "steps") else faithful
    options_map = {id(final): {"zipmap": False}} if classifier else None
    onx, problem = None, ""
    # float64 input computes like scikit-learn; float32 is the fallback for estimators whose
    # converters only take floats
    for tensor_type in (DoubleTensorType, FloatTensorType):
        try:
            onx = convert_sklearn(
                faithful,
                initial_types=[("input", tensor_type([None, int(features)]))],
                options=options_map,
                target_opset={"": 17, "ai.onnx.ml": 3},
            )
            break
        except Exception as exc:
            problem = str(exc)[:300]
    if onx is None:
        raise UnsupportedModel(f"skl2onnx cannot convert this estimator: {problem}")
    path = workdir / "model.onnx"
    path.write_bytes(onx.SerializeToString())
    names = [o.name for o in onx.graph.output]

    def original(inputs: Arrays) -> Arrays:
        x = inputs["input"]
        if classifier:
            return {names[0]: np.asarray(model.predict(x)), names[1]: model.predict_proba(x)}
        return {names[0]: np.asarray(model.predict(x)).reshape(len(x), -1)}

    return Converted(path, original, label_outputs=(names[0],) if classifier else ())


def _is_tree_model(estimator: Any) -> bool:
    return hasattr(estimator, "tree_") or hasattr(estimator, "estimators_")


def _faithful(model: Any) -> Any:
    """Trees in scikit-learn cast their input to float32 before comparing with thresholds; put
    the same cast into the graph (skl2onnx's CastTransformer) so ONNX splits exactly alike."""
    from skl2onnx.sklapi import CastTransformer
    from sklearn.pipeline import Pipeline

    cast = ("modelplane_cast", CastTransformer(dtype=np.float32))
    if isinstance(model, Pipeline) and _is_tree_model(model.steps[-1][1]):
        return Pipeline([*model.steps[:-1], cast, model.steps[-1]])
    if _is_tree_model(model):
        return Pipeline([cast, ("model", model)])
    return model
