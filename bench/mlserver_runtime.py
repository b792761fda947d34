"""The custom ONNX runtime for MLServer that the benchmark compares against, written the way
MLServer's docs describe custom runtimes (an ``MLModel`` with ``load`` and ``predict``).
Copied next to the model settings by ``bench/serving.py``; runs in MLServer's own venv."""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        threads = (self.settings.parameters.extra or {}).get("intra_op_threads")
        if threads:
            options.intra_op_num_threads = int(threads)
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self._session.run(self._outputs, inputs)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output(name, np.asarray(value))
                for name, value in zip(self._outputs, results, strict=False)
            ],
        )
