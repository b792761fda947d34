"""Conversions: a pushed non-ONNX model is converted in an isolated worker, verified against the
original (parity report), and stored as a version. Watchable as a job."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from modelplane.convert import onnx as onnx_source
from modelplane.convert.archive import UnpackLimits
from modelplane.convert.base import Optimization
from modelplane.convert.extras import importable, require_extra
from modelplane.convert.runner import ConversionCrashed, ConversionRunner, ConversionSpec
from modelplane.domain import Conversion, ModelVersion
from modelplane.domain.model import DETECTED_FORMATS
from modelplane.domain.signature import GENERATION_SIGNATURE, TEXT_GENERATION
from modelplane.errors import ModelplaneError, NotFound
from modelplane.registry.blobs import DIGEST_RE, BlobStore
from modelplane.registry.service import PushRequest, RegistryService, Upload, now
from modelplane.registry.tables import ConversionRow
from modelplane.security.inputguard import input_stats, load_samples
from modelplane.settings import Settings
from modelplane.telemetry.metrics import Metrics

log = logging.getLogger("modelplane.conversions")
OPTIMIZE = "optimize"  # the worker's operation for a version that is already ONNX
CHUNK = 1 << 20
SCRATCH_NAME = re.compile(r"[0-9a-f]{16}")
SAMPLES_MAX_BYTES = 64 << 20  # one upload to POST /api/v1/samples
SAMPLES_MAX_UNPACKED = 256 << 20  # what a .npz of samples may unpack to in the server
SAMPLES_REMEMBERED = 10_000  # uploads a server remembers (the oldest is forgotten beyond)


@dataclass(frozen=True, slots=True)
class ConversionOptions:
    samples_digest: str | None = None
    tolerance: float | None = None
    force: bool = False
    input_shape: tuple[int, ...] | None = None
    level: str | None = None
    quantize: str | None = None
    precision: str | None = None  # a language model's weights: fp32, int8, int4
    processing: dict[str, Any] | None = None  # images/audio in, labels out (domain/processing)
    auto: float | None = None  # optimize --auto: the share of rows whose prediction may change


class SampleUploads:
    """The samples each key uploaded to this server (``POST /api/v1/samples``): a push may name
    only those, so a key can neither read statistics of another blob nor learn which digests
    exist. In memory and bounded: after a restart, samples are uploaded again."""

    def __init__(self, limit: int = SAMPLES_REMEMBERED) -> None:
        self._limit = limit
        self._sizes: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()  # uploads on the event loop, reads in the thread pool

    def add(self, key_id: str, digest: str, size: int) -> None:
        with self._lock:
            self._sizes.pop((key_id, digest), None)
            self._sizes[(key_id, digest)] = size
            while len(self._sizes) > self._limit:
                self._sizes.popitem(last=False)

    def size(self, key_id: str, digest: str) -> int | None:
        """The size of the samples ``key_id`` uploaded as ``digest``; None if it did not."""
        with self._lock:
            return self._sizes.get((key_id, digest))


def unknown_samples(digest: str) -> NotFound:
    """What samples a key did not upload answer, whether the digest exists or not."""
    return NotFound(
        f"no samples with digest {digest[:64]!r} were uploaded with this key; upload them with "
        "POST /api/v1/samples first (the server forgets the digests it gave when it restarts)"
    )


def missing_conversion(conversion_id: str) -> NotFound:
    """What a conversion that does not exist answers (and one outside a key's scope)."""
    return NotFound(f"no conversion {conversion_id!r}")


def make_runner(settings: Settings) -> ConversionRunner:
    unpack = UnpackLimits(settings.registry.max_upload_bytes, settings.convert.max_unpack_ratio)
    convert = settings.convert
    return ConversionRunner(convert.timeout_s, convert.memory_limit_bytes, convert.cpu_limit_s,
                            unpack)  # fmt: skip


def scratch_dir(settings: Settings) -> Path:
    """A new scratch folder's path (removed by its user; leftovers by ``clean_scratch``)."""
    return settings.work_dir / uuid.uuid4().hex[:16]


def clean_scratch(work_dir: Path) -> None:
    """Remove the scratch folders of conversions and load checks (named by a 16-hex id)."""
    if work_dir.is_dir():
        for entry in work_dir.iterdir():
            if SCRATCH_NAME.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)


def load_checker(settings: Settings) -> Callable[[Path], Awaitable[None]]:
    """What checks, in a worker process, that ONNX Runtime loads a pushed ONNX file."""
    runner = make_runner(settings)

    async def check(model: Path) -> None:
        workdir = scratch_dir(settings)
        try:
            await runner.check_loads(model, workdir)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    return check


def _unexpected_failure(conversion_id: str, reason: str) -> str:
    """What a user reads when a conversion fails in a way nobody wrote a message for (the server
    log has the traceback under the conversion id)."""
    return (
        f"{reason}. Check that the file loads in the "
        "framework that saved it and push it again; if it fails again, give the server's "
        f"operator the conversion id {conversion_id}: the server log has the details"
    )


def _to_conversion(row: ConversionRow) -> Conversion:
    return Conversion(
        id=row.id,
        model=row.model,
        source_format=row.source_format,
        state=row.state,
        stage=row.stage,
        created_at=row.created_at,
        updated_at=row.updated_at,
        error=row.error,
        report=row.report,
        version=row.version,
    )


class ConversionService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        registry: RegistryService,
        blobs: BlobStore,
        settings: Settings,
        metrics: Metrics,
        is_importable: Callable[[str], bool] = importable,
    ) -> None:
        self._metrics = metrics
        self._is_importable = is_importable  # the worker shares this environment
        self._sessions = sessions
        self._registry = registry
        self._blobs = blobs
        self._settings = settings
        self._runner = make_runner(settings)
        self._tasks: set[asyncio.Task[None]] = set()
        self._samples = SampleUploads()

    def samples_uploaded(self, key_id: str, digest: str, size: int) -> None:
        """Remember that ``key_id`` uploaded samples as ``digest`` (``POST /api/v1/samples``)."""
        self._samples.add(key_id, digest, size)

    def start(self, request: PushRequest, upload: Upload, options: ConversionOptions) -> Conversion:
        require_extra(upload.source_format, self._is_importable)  # 422 naming the pip command
        if options.samples_digest is not None and (
            not DIGEST_RE.match(options.samples_digest)
            or not self._blobs.exists(options.samples_digest)
        ):
            raise NotFound(
                f"no uploaded samples with digest {options.samples_digest!r}; upload them with "
                "POST /api/v1/samples first"
            )
        stamp = now()
        row = ConversionRow(
            id=uuid.uuid4().hex[:16],
            model=request.name,
            source_format=upload.source_format,
            source_digest=upload.artifact.digest,
            state="running",
            stage="convert",
            created_by=request.created_by,
            created_at=stamp,
            updated_at=stamp,
        )
        with self._sessions.begin() as session:
            session.add(row)
        task = asyncio.create_task(self._run(row.id, request, upload, options))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _to_conversion(row)

    def input_stats(self, key_id: str, samples_digest: str) -> dict[str, Any]:
        """Per-input statistics of samples ``key_id`` uploaded, kept with the version pushed
        with them (for a deployment's input guard). Raises NotFound for samples this key did
        not upload (the same whether the digest exists or not), InvalidInput for samples that
        cannot be read. Read in memory, within the samples' limits, never unpickled."""
        size = self._samples.size(key_id, samples_digest)
        if size is None or size > SAMPLES_MAX_BYTES or not DIGEST_RE.match(samples_digest):
            raise unknown_samples(samples_digest)
        data = self._blobs.read(samples_digest, SAMPLES_MAX_BYTES)
        return input_stats(load_samples(data, SAMPLES_MAX_UNPACKED))

    def optimize(
        self,
        source: ModelVersion,
        choice: Optimization,
        created_by: str,
        samples: tuple[str, dict[str, Any]] | None = None,
    ) -> Conversion:
        """A new version made from ``source`` by graph optimization and/or quantization, or
        (``choice.auto``) by the fastest of every way within the accuracy budget, measured on
        ``samples`` (digest and statistics, uploaded by the caller), else the samples pushed
        with ``source``, else inputs generated from its signature. The new version keeps the
        samples it was measured on."""
        choice.check()
        what = choice.describe()
        digest, stats = samples if samples else (source.samples_digest, source.input_stats)
        request = PushRequest(
            name=source.model,
            description=f"optimized from {source.ref} ({what})",
            tags=dict(source.tags),
            parent=source.ref,
            created_by=created_by,
            input_stats=stats,
            samples_digest=digest,
        )
        upload = Upload(source.artifact, OPTIMIZE, None)
        options = ConversionOptions(samples_digest=digest, force=True, level=choice.level,
                                    quantize=choice.quantize, auto=choice.auto)  # fmt: skip
        return self.start(request, upload, options)

    def get(self, conversion_id: str) -> Conversion:
        with self._sessions() as session:
            row = session.get(ConversionRow, conversion_id)
            if row is None:
                raise missing_conversion(conversion_id)
            return _to_conversion(row)

    def list(self) -> list[Conversion]:
        with self._sessions() as session:
            rows = session.scalars(
                select(ConversionRow).order_by(ConversionRow.created_at.desc()).limit(100)
            ).all()
            return [_to_conversion(r) for r in rows]

    def fail_interrupted(self) -> int:
        """Mark conversions a previous process left running as failed and remove every scratch
        folder a previous process left (run at start, before any conversion)."""
        clean_scratch(self._settings.work_dir)
        with self._sessions.begin() as session:
            rows = session.scalars(select(ConversionRow).where(ConversionRow.state == "running"))
            count = 0
            for row in rows:
                row.state, row.error, row.updated_at = "failed", "interrupted by a restart", now()
                count += 1
            return count

    def _update(self, conversion_id: str, **fields: object) -> None:
        if fields.get("state") in ("succeeded", "failed"):
            self._metrics.conversions.labels(str(fields["state"])).inc()
        with self._sessions.begin() as session:
            row = session.get(ConversionRow, conversion_id)
            if row is not None:
                for key, value in fields.items():
                    setattr(row, key, value)
                row.updated_at = now()

    async def _run(
        self, conversion_id: str, request: PushRequest, upload: Upload, options: ConversionOptions
    ) -> None:
        workdir = self._settings.work_dir / conversion_id
        try:
            source, samples = await run_in_threadpool(self._inputs, workdir, upload, options)
            spec = ConversionSpec(
                source=source,
                source_format=upload.source_format,
                workdir=workdir,
                trust_pickle=request.trust_pickle,
                samples=samples,
                tolerance=options.tolerance,
                input_shape=options.input_shape,
                level=options.level,
                quantize=options.quantize,
                precision=options.precision,
                processing=options.processing,
                auto=options.auto,
            )  # fmt: skip

            def stage(name: str) -> None:
                self._update(conversion_id, stage=name)

            result = await self._runner.run(spec, stage)
            report = result.report
            if not report["passed"] and not options.force:
                failing = [o["name"] for o in report["outputs"] if not o["passed"]]
                self._update(
                    conversion_id, state="failed", report=report,
                    error=f"the converted model does not match the original on output(s) "
                    f"{', '.join(failing)}; see the report, or push with --force to keep it",
                )  # fmt: skip
                return
            stage("store")
            version = await run_in_threadpool(self._store, request, upload, result.onnx_path,
                                              report)  # fmt: skip
            self._update(conversion_id, state="succeeded", stage="done", report=report,
                         version=version)  # fmt: skip
            log.info("conversion %s stored %s:%s", conversion_id, request.name, version)
        except ConversionCrashed as exc:
            log.error("conversion %s failed: %s; the worker's stderr ends with:\n%s",
                      conversion_id, exc.reason, exc.detail)  # fmt: skip
            self._update(conversion_id, state="failed",
                         error=_unexpected_failure(conversion_id, exc.reason))  # fmt: skip
        except ModelplaneError as exc:
            self._update(conversion_id, state="failed", error=exc.message)
        except Exception:
            log.exception("conversion %s failed", conversion_id)
            error = _unexpected_failure(conversion_id, "the server hit an internal error")
            self._update(conversion_id, state="failed", error=error)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _inputs(
        self, workdir: Path, upload: Upload, options: ConversionOptions
    ) -> tuple[Path, Path | None]:
        """The job's source (and samples) decrypted and verified into its scratch folder (0700,
        removed with the job): the worker's converters read files."""
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        source = workdir / "source"
        self._blobs.export(upload.artifact.digest, source)
        samples = None
        if options.samples_digest:
            samples = workdir / "samples"
            self._blobs.export(options.samples_digest, samples)
        return source, samples

    def _store(
        self, request: PushRequest, upload: Upload, path: Path, report: dict[str, object]
    ) -> int:
        staged = self._blobs.stage(self._settings.registry.max_upload_bytes)
        try:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    staged.write(chunk)
            staged.seal()
            signature = (
                GENERATION_SIGNATURE
                if report.get("task") == TEXT_GENERATION
                else onnx_source.inspect(staged.path)
            )
            artifact = staged.commit()
        except BaseException:
            staged.discard()
            raise
        optimized = upload.source_format == OPTIMIZE
        if request.samples_digest and not self._blobs.exists(request.samples_digest):
            request = replace(request, samples_digest=None)  # deleted with a version meanwhile
        version = self._registry.record(
            request, artifact, signature,
            "onnx" if optimized else DETECTED_FORMATS[upload.source_format],
            None if optimized else upload.artifact.digest, dict(report),
        )  # fmt: skip
        return version.version
