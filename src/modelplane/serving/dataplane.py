"""The transport-agnostic core of a replica: V2 inference on one Runtime, answering frames."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from modelplane.errors import DeadlineExceeded, InvalidInput, ModelplaneError, Unavailable
from modelplane.protocol import frames, v2
from modelplane.runtime import BatchStats, Runtime
from modelplane.security.inputguard import InputGuard, InputOutlier
from modelplane.serving.planes import PlaneState
from modelplane.telemetry.drift import DriftMonitor
from modelplane.telemetry.logs import LogWriter, now_iso
from modelplane.telemetry.usage import Usage

JSON_OK = 200
DRIFT_EVERY_S = 0.02  # at most one request in this long is sampled for drift (50 a second)
log = logging.getLogger("modelplane.replica")


class PayloadLog:
    """Samples request and response bodies to a file (opt-in per deployment: they may hold
    sensitive data). Binary bodies are stored base64-encoded."""

    def __init__(self, writer: LogWriter, rate: float) -> None:
        self._writer = writer
        self._rate = rate

    def maybe(self, request_id: str, request: bytes, response: bytes, status: int) -> None:
        if random.random() >= self._rate:  # noqa: S311  # nosec B311  # sampling, not security
            return
        self._writer.write({"time": now_iso(), "request_id": request_id or None,
                            "status": status, "request": _text(request),
                            "response": _text(response)})  # fmt: skip


def _crash_message(model: str, request_id: str) -> str:
    where = f" under request id {request_id}" if request_id else ""
    return (
        f"model {model!r} failed while running this request; retry it, and if it fails again "
        f"ask the operator to look in the replica's log{where}"
    )


def _text(body: bytes) -> dict[str, str]:
    try:
        return {"encoding": "utf-8", "body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"encoding": "base64", "body": base64.b64encode(body).decode("ascii")}


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    body: bytes
    header_length: int | None
    outlier: str = ""  # the input flagged as an outlier (input_guard=flag)


def _timeout_s(request: v2.InferenceRequest, frame_timeout_ms: int) -> float | None:
    """The tighter of the request's ``timeout`` parameter (microseconds, as Triton) and the
    gateway's deadline."""
    limits = []
    raw = request.parameters.get("timeout")
    if raw is not None:
        if not isinstance(raw, int) or isinstance(raw, bool) or raw <= 0:
            raise InvalidInput(f"parameter 'timeout' must be a positive integer (µs), got {raw!r}")
        limits.append(raw / 1e6)
    if frame_timeout_ms:
        limits.append(frame_timeout_ms / 1e3)
    return min(limits) if limits else None


class DataPlane(PlaneState):
    """Serves one model version under a public name."""

    def __init__(
        self,
        name: str,
        version: str,
        runtime: Runtime,
        limits: v2.Limits,
        request_log: Callable[[str, str | None, str, Any], None] | None = None,
        payload_log: PayloadLog | None = None,
        guard: tuple[InputGuard, str] | None = None,
        drift: DriftMonitor | None = None,
    ) -> None:
        super().__init__(name, version, runtime)
        self._drift = drift
        self._drift_next = 0.0
        self._runtime: Runtime = runtime
        self._guard = guard  # (check, action: log|flag|reject); None: no statistics or off
        self.input_outliers = 0
        self._request_log = request_log
        self._payload_log = payload_log
        self._limits = limits
        self._usage = Usage()

    def metadata(self) -> dict[str, Any]:
        signature = self._runtime.signature
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [t.to_dict() for t in signature.inputs],
            "outputs": [t.to_dict() for t in signature.outputs],
        }

    def stats(self) -> dict[str, Any]:
        """Counts in the shape of Triton's statistics extension (the parts we keep)."""
        runtime = self._runtime
        batching = runtime if isinstance(runtime, BatchStats) else None
        sizes = batching.batch_sizes if batching else {}
        doc = {
            "inference_count": self.request_seconds.count,
            "failure_count": self.failure_count,
            "execution_count": sum(sizes.values()),
            "batch_sizes": {str(size): count for size, count in sorted(sizes.items())},
            "load_seconds": self.load_seconds,
            "request_seconds": self.request_seconds.snapshot(),
        }
        if batching is not None:
            doc["queue_seconds"] = batching.queue_seconds.snapshot()
            doc["compute_seconds"] = batching.compute_seconds.snapshot()
            doc["queue_depth"] = batching.queue_depth
        if self._guard is not None:
            doc["input_outliers"] = self.input_outliers
        if self._drift is not None:
            doc["drift"] = self._drift.report()
        doc.update(self._usage.report())
        return doc

    async def infer(
        self, body: bytes, header_length: int | None, deadline_ms: int = 0
    ) -> EncodedResponse:
        signature = self._runtime.signature
        request = v2.decode_request(body, header_length, signature, self._limits)
        outlier = "" if self._guard is None else self._check_inputs(request.inputs)
        names = v2.output_names(request, signature)
        timeout = _timeout_s(request, deadline_ms)
        try:
            async with asyncio.timeout(timeout):  # in this task: no second task per request
                results = await self._runtime.predict(request.inputs, names)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request did not finish within its timeout of {timeout * 1e3:g} ms"
                if timeout
                else "the request timed out"
            ) from None
        payload, length = v2.encode_response(self.name, self.version, request, results, names)
        if self._drift is not None and (now := time.monotonic()) >= self._drift_next:
            # sampled, and only once the answer is on its way: after this task yields
            self._drift_next = now + DRIFT_EVERY_S
            asyncio.get_running_loop().call_soon(self._drift.observe, request.inputs, results)
        return EncodedResponse(payload, length, outlier)

    def _check_inputs(self, inputs: dict[str, Any]) -> str:
        """The deployment's input guard: the outlying input's name when it is to be flagged;
        raises InputOutlier (422) when it is to be rejected; logs it in every case."""
        assert self._guard is not None
        guard, action = self._guard
        found = guard.check(inputs)
        if found is None:
            return ""
        self.input_outliers += 1
        log.warning("input outlier (%s) for %s:%s: %s", action, self.name, self.version,
                    found.message())  # fmt: skip
        if action == "reject":
            raise InputOutlier(
                f"{found.message()}; this deployment rejects such inputs (input_guard=reject)"
            )
        return found.input if action == "flag" else ""

    async def _answer_infer(self, frame: frames.RequestFrame) -> frames.ResponseFrame:
        """Infer, and log and count the outcome as the client sees it: an error of ours keeps its
        status and message; anything else the model raises is a 500 with a message that names the
        request id and holds no internals, while the traceback goes to this replica's log."""
        started = time.perf_counter()
        status, error, level = JSON_OK, None, "info"
        try:
            result = await self.infer(frame.payload, frame.header_len, frame.timeout_ms)
        except ModelplaneError as exc:
            status, error, level = exc.status, exc.message, "warning"
            raise
        except asyncio.CancelledError:  # the replica is stopping; the gateway retries elsewhere
            status, error, level = (
                Unavailable.status,
                "the replica stopped before answering",
                "warning",
            )
            raise
        except Exception:
            log.exception(
                "model %s:%s failed on a request", self.name, self.version,
                extra={"request_id": frame.request_id or None},
            )  # fmt: skip
            crash = ModelplaneError(_crash_message(self.name, frame.request_id))
            status, error, level = crash.status, crash.message, "error"
            raise crash from None
        finally:
            elapsed = time.perf_counter() - started
            self.request_seconds.observe(elapsed)
            if error is not None:
                self.failure_count += 1
            if self._request_log is not None:
                fields: dict[str, Any] = {"status": status, "ms": round(elapsed * 1e3, 3),
                                          "bytes_in": len(frame.payload),
                                          "version": self.version}  # fmt: skip
                if error is not None:
                    fields["error"] = error
                self._request_log(level, frame.request_id, "infer", fields)
        if self._payload_log is not None:
            self._payload_log.maybe(frame.request_id, frame.payload, result.body, JSON_OK)
        if result.outlier:  # flagged: the gateway turns this into a response header
            body = result.outlier.encode() + b"\0" + result.body
            return frames.ResponseFrame(frame.id, JSON_OK | frames.OUTLIER, result.header_length,
                                        body)  # fmt: skip
        return frames.ResponseFrame(frame.id, JSON_OK, result.header_length, result.body)

    async def generate(
        self, frame: frames.RequestFrame, emit: Callable[[frames.ResponseFrame], None]
    ) -> frames.ResponseFrame:
        """This replica serves tensors: a GENERATE is answered with a 400 saying so."""
        message = (f"model {self.name!r} is not a language model; call it with "
                   f"POST /v2/models/{self.name}/infer")  # fmt: skip
        return frames.ResponseFrame(frame.id, 400, None, v2.error_body(message, "invalid_argument"))

    async def handle(self, frame: frames.RequestFrame) -> frames.ResponseFrame:
        """Answer one frame; errors become a status and ``{"error": ...}``, never a crash."""
        try:
            if frame.op == frames.INFER:
                return await self._answer_infer(frame)
            if frame.op == frames.READY:
                return frames.ResponseFrame(frame.id, 200 if self.ready else 503, None, b"")
            if frame.op == frames.METADATA:
                return frames.ResponseFrame(frame.id, 200, None, orjson.dumps(self.metadata()))
            if frame.op == frames.STATS:
                return frames.ResponseFrame(frame.id, 200, None, orjson.dumps(self.stats()))
            raise InvalidInput(f"unknown operation {frame.op}")
        except ModelplaneError as exc:
            return frames.ResponseFrame(
                frame.id, exc.status, None, v2.error_body(exc.message, exc.code)
            )
