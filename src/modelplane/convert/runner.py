"""Runs the conversion worker in its own process, with a time, a memory and a CPU-time limit, a
scratch folder, and an environment that holds nothing of the platform's (no keys, no database
URL). What it reports for users has any server path cut out (the server log keeps the detail)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelplane.convert.archive import UnpackLimits
from modelplane.errors import UnsupportedModel, error_for_status, redact_paths

log = logging.getLogger("modelplane.conversions")

# what the worker may see of the environment
PASS_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
STDERR_TAIL_BYTES = 16 << 10  # how much of the worker's stderr is kept for the server log


class ConversionCrashed(Exception):
    """The worker failed in a way no message was written for: an unexpected exception, a crash,
    a signal. ``reason`` is safe to show users; ``detail`` (the worker's traceback and the tail
    of its stderr) holds paths and internals, and belongs in the server log only."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ConversionSpec:
    source: Path
    source_format: str
    workdir: Path
    trust_pickle: bool = False
    samples: Path | None = None
    tolerance: float | None = None
    input_shape: tuple[int, ...] | None = None
    level: str | None = None
    quantize: str | None = None
    precision: str | None = None
    processing: dict[str, Any] | None = None  # declared pre/post-processing (domain/processing)
    auto: float | None = None  # optimize --auto: the share of rows whose prediction may change


@dataclass(frozen=True, slots=True)
class ConversionResult:
    onnx_path: Path
    report: dict[str, Any]


class ConversionRunner:
    def __init__(
        self, timeout_s: float, memory_limit_bytes: int, cpu_limit_s: int, unpack: UnpackLimits
    ) -> None:
        self._timeout = timeout_s
        self._memory = memory_limit_bytes
        self._cpu = cpu_limit_s
        self._unpack = unpack

    async def check_loads(self, model: Path, workdir: Path) -> None:
        """Raise UnsupportedModel (422) unless ONNX Runtime loads the ONNX file ``model``: tried
        in a worker, so a graph that crashes the runtime crashes nothing of the platform's."""
        try:
            await self.run(ConversionSpec(model, "load", workdir))
        except ConversionCrashed as exc:
            raise UnsupportedModel(
                f"ONNX Runtime could not load this model: {exc.reason}"
            ) from None

    async def run(
        self, spec: ConversionSpec, on_stage: Callable[[str], None] | None = None
    ) -> ConversionResult:
        spec.workdir.mkdir(parents=True, exist_ok=True)
        doc = {
            "source": str(spec.source),
            "format": spec.source_format,
            "workdir": str(spec.workdir),
            "trust_pickle": spec.trust_pickle,
            "samples": str(spec.samples) if spec.samples else None,
            "tolerance": spec.tolerance,
            "input_shape": list(spec.input_shape) if spec.input_shape else None,
            "memory_limit_bytes": self._memory,
            "cpu_limit_s": self._cpu,
            "unpack_max_bytes": self._unpack.max_bytes,
            "unpack_max_ratio": self._unpack.max_ratio,
            "parent_pid": os.getpid(),
            "level": spec.level,
            "quantize": spec.quantize,
            "precision": spec.precision,
            "processing": spec.processing,
            "auto": spec.auto,
        }
        (spec.workdir / "spec.json").write_text(json.dumps(doc))
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.update(HOME=str(spec.workdir), KERAS_BACKEND="torch", HF_HUB_OFFLINE="1",
                   OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
                   TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "modelplane.convert.worker", str(spec.workdir / "spec.json"),
            cwd=spec.workdir, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            stderr = await asyncio.wait_for(self._follow(proc, on_stage), self._timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            log.warning("conversion %s: the worker ran past %gs and was stopped",
                        spec.workdir.name, self._timeout)  # fmt: skip
            raise UnsupportedModel(
                f"the conversion did not finish within {self._timeout:g}s and was stopped; raise "
                "MODELPLANE_CONVERT__TIMEOUT_S if the model is just large"
            ) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        error_file = spec.workdir / "error.json"
        if proc.returncode != 0:
            detail = stderr.decode("utf-8", "replace") or "(the worker wrote nothing to stderr)"
            if error_file.exists():
                error = json.loads(error_file.read_text())
                message = redact_paths(str(error["message"]))
                if error.get("unexpected"):
                    raise ConversionCrashed(message, detail)
                raise error_for_status(int(error["status"]), message)
            if proc.returncode == -signal.SIGXCPU:
                raise UnsupportedModel(
                    f"the conversion used more than {self._cpu} CPU-seconds and was stopped; "
                    "raise MODELPLANE_CONVERT__CPU_LIMIT_S if the model is just large"
                )
            if proc.returncode is not None and proc.returncode < 0:
                raise ConversionCrashed(
                    f"the conversion process was killed by signal {-proc.returncode} (out of "
                    f"memory? the limit is {self._memory >> 20} MiB)",
                    detail,
                )
            raise ConversionCrashed(
                f"the conversion process exited with status {proc.returncode}", detail
            )
        report = json.loads((spec.workdir / "report.json").read_text())
        artifact = str(report.pop("artifact", "model.onnx"))  # a bundle for language models
        return ConversionResult(spec.workdir / artifact, report)

    @staticmethod
    async def _follow(
        proc: asyncio.subprocess.Process, on_stage: Callable[[str], None] | None
    ) -> bytes:
        """Pass stage events on until the worker ends; return the tail of its stderr."""
        assert proc.stdout is not None
        assert proc.stderr is not None
        drain = asyncio.create_task(_tail(proc.stderr, STDERR_TAIL_BYTES))
        async for line in proc.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if on_stage is not None and isinstance(event, dict) and "stage" in event:
                    on_stage(str(event["stage"]))
        stderr = await drain
        await proc.wait()
        return stderr


async def _tail(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Read ``stream`` to its end, keeping only its last ``limit`` bytes."""
    kept = bytearray()
    while chunk := await stream.read(1 << 16):
        kept += chunk
        if len(kept) > limit:
            del kept[:-limit]
    return bytes(kept)
