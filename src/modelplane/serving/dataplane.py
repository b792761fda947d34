"""The transport-agnostic core of a replica: V2 inference on one Runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from modelplane.errors import NotFound
from modelplane.protocol import v2
from modelplane.runtime import Runtime


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    body: bytes
    header_length: int | None


class DataPlane:
    """Serves one model version under a public name."""

    def __init__(self, name: str, version: str, runtime: Runtime, limits: v2.Limits) -> None:
        self.name = name
        self.version = version
        self._runtime = runtime
        self._limits = limits
        self.ready = False

    def load(self) -> None:
        self._runtime.load()
        self.ready = True

    def check(self, name: str, version: str | None) -> None:
        if name != self.name:
            raise NotFound(f"model {name!r} is not served here")
        if version is not None and version != self.version:
            raise NotFound(
                f"version {version} of model {name!r} is not deployed (deployed: {self.version})"
            )

    def metadata(self) -> dict[str, Any]:
        signature = self._runtime.signature
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [t.to_dict() for t in signature.inputs],
            "outputs": [t.to_dict() for t in signature.outputs],
        }

    async def infer(self, body: bytes, header_length: int | None) -> EncodedResponse:
        signature = self._runtime.signature
        request = v2.decode_request(body, header_length, signature, self._limits)
        names = v2.output_names(request, signature)
        results = await run_in_threadpool(self._runtime.predict, request.inputs, names)
        payload, length = v2.encode_response(self.name, self.version, request, results, names)
        return EncodedResponse(payload, length)
