"""The iris demo: trained from scikit-learn's bundled data, converted with skl2onnx, pushed,
aliased ``production`` and deployed, once. Needs the ``sklearn`` extra."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from modelplane.domain import ModelRef
from modelplane.errors import NotFound
from modelplane.registry.deployments import DeploymentStore
from modelplane.registry.service import PushRequest, RegistryService

log = logging.getLogger("modelplane.demo")
NAME = "iris"


def train_iris() -> Any:
    """A LogisticRegression fitted on scikit-learn's bundled iris data."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x.astype("float32"), y)


def iris_onnx(model: Any = None) -> bytes:
    """The iris model as ONNX: input ``float_input`` FP32 [N,4]; outputs ``label`` INT64 [N]
    and ``probabilities`` FP32 [N,3]."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = train_iris() if model is None else model
    onx = convert_sklearn(
        model,
        initial_types=[("float_input", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    return bytes(onx.SerializeToString())


def ensure_demo(registry: RegistryService, deployments: DeploymentStore) -> None:
    try:
        registry.resolve(ModelRef(NAME))
    except NotFound:
        log.info("training the iris demo model")

        async def body() -> AsyncIterator[bytes]:
            yield iris_onnx()

        version = asyncio.run(
            registry.push(
                PushRequest(NAME, "onnx", "iris demo", {"demo": "true"}, created_by="demo"), body()
            )
        )
        registry.set_alias(NAME, version.version, "production")
    try:
        deployments.get(NAME)
    except NotFound:
        deployments.apply(ModelRef(NAME, alias="production"), replicas=1)
