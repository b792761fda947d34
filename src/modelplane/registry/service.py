"""The registry: push, versions, aliases, lineage and deletion, with atomic writes."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker
from starlette.concurrency import run_in_threadpool

from modelplane.convert import onnx as onnx_source
from modelplane.convert.archive import DEFAULT_RATIO, UnpackLimits
from modelplane.convert.detect import detect
from modelplane.domain import Artifact, Conversion, Model, ModelRef, ModelVersion, Signature
from modelplane.domain.model import (
    DETECTED_FORMATS,
    SOURCE_FORMATS,
    alias_problem,
    name_problem,
)
from modelplane.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    StorageFull,
    UnsupportedModel,
)
from modelplane.registry.blobs import BlobStore
from modelplane.registry.tables import (
    AliasRow,
    ConversionRow,
    DeploymentRow,
    ModelRow,
    VersionRow,
)


@dataclass(frozen=True, slots=True)
class PushRequest:
    name: str
    source_format: str = "auto"
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    parent: str | None = None
    created_by: str = ""
    trust_pickle: bool = False
    allow_duplicate: bool = False
    declared_size: int | None = None  # the body's Content-Length, when the client sent one
    input_stats: dict[str, Any] | None = None  # of the samples given with the push
    samples_digest: str | None = None  # those samples, kept with the version
    processed: bool = False  # declares pre/post-processing: even ONNX goes through the worker


@dataclass(frozen=True, slots=True)
class Upload:
    """An upload kept in the blob store: ONNX with its signature, or a conversion's source."""

    artifact: Artifact
    source_format: str
    signature: Signature | None


def missing_model(name: str) -> NotFound:
    """What a model that does not exist answers (and one outside a key's scope, identically)."""
    return NotFound(f"model {name!r} not found; push it first with `modelplane push`")


def too_large_upload(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"model file is larger than the limit of {limit} bytes; raise "
        "MODELPLANE_REGISTRY__MAX_UPLOAD_BYTES on the server to accept it"
    )


def now() -> datetime:
    return datetime.now(UTC)


def to_version(row: VersionRow) -> ModelVersion:
    return ModelVersion(
        model=row.model.name,
        version=row.version,
        artifact=Artifact(row.digest, row.size),
        source_format=row.source_format,
        signature=Signature.from_dict(row.signature),
        description=row.description,
        tags=dict(row.tags),
        created_by=row.created_by,
        created_at=row.created_at,
        parent=row.parent,
        aliases=tuple(sorted(a.alias for a in row.model.aliases if a.version_id == row.id)),
        source_digest=row.source_digest,
        report=row.report,
        input_stats=row.input_stats,
        samples_digest=row.samples_digest,
    )


def to_model(row: ModelRow) -> Model:
    return Model(
        name=row.name,
        description=row.description,
        created_at=row.created_at,
        latest_version=row.versions[-1].version if row.versions else None,
        aliases={
            a.alias: v.version for a in row.aliases for v in row.versions if v.id == a.version_id
        },
    )


class RegistryService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobStore,
        max_upload: int,
        max_unpack_ratio: float = DEFAULT_RATIO,
        check_loads: Callable[[Path], Awaitable[None]] | None = None,
    ) -> None:
        """``check_loads`` raises UnsupportedModel unless ONNX Runtime loads a pushed ONNX file
        (in a worker process: ``ConversionService``'s runner); None skips the check."""
        self._sessions = sessions
        self._blobs = blobs
        self._max_upload = max_upload
        self._unpack = UnpackLimits(max_upload, max_unpack_ratio)
        self._check_loads = check_loads

    # ---- push -------------------------------------------------------------------------------
    async def upload(self, request: PushRequest, body: AsyncIterator[bytes]) -> Upload:
        """Stream ``body`` into the blob store and find its format. ONNX is validated before it
        is kept; other formats are kept as the source of a conversion. Pickles are refused
        unless the push trusts them."""
        if problem := name_problem(request.name):
            raise InvalidInput(problem)
        if request.declared_size is not None and request.declared_size > self._max_upload:
            raise too_large_upload(self._max_upload)  # refused before a byte is read
        wanted = request.source_format
        if wanted not in ("auto", *SOURCE_FORMATS):
            raise InvalidInput(
                f"unknown format {wanted!r}; use one of auto, {', '.join(SOURCE_FORMATS)}"
            )
        staged = self._blobs.stage(self._max_upload)
        try:
            async for chunk in body:
                await run_in_threadpool(staged.write, chunk)
            await run_in_threadpool(staged.seal)
            found = await run_in_threadpool(detect, staged.path, self._unpack)
            if wanted not in ("auto", DETECTED_FORMATS[found]):
                raise UnsupportedModel(
                    f"--format {wanted} was given but the file is a {DETECTED_FORMATS[found]} "
                    "model; use --format auto"
                )
            if found == "sklearn" and not request.trust_pickle:
                raise UnsupportedModel(
                    "this is a pickle (scikit-learn/joblib). Loading a pickle runs code from the "
                    "file, so modelplane refuses it unless you push with --trust-pickle and a key "
                    "allowed to; it is then loaded only in the isolated conversion process. "
                    "Pushing ONNX (skl2onnx) avoids pickle altogether"
                )
            signature = None
            if found == "onnx":
                signature = await run_in_threadpool(onnx_source.inspect, staged.path)
                if self._check_loads is not None:
                    await self._check_loads(staged.path)  # before the version can be seen
            artifact = await run_in_threadpool(staged.commit)
        except OSError as exc:
            staged.discard()  # the space the upload took is given back at once
            if exc.errno == errno.ENOSPC:
                raise StorageFull(
                    "no space left on the server's disk for this upload; nothing was kept. "
                    "Free space where MODELPLANE_HOME is, then push again"
                ) from None
            raise
        except BaseException:
            staged.discard()
            raise
        return Upload(artifact, found, signature)

    @overload
    async def push(self, request: PushRequest, body: AsyncIterator[bytes]) -> ModelVersion: ...

    @overload
    async def push(
        self,
        request: PushRequest,
        body: AsyncIterator[bytes],
        convert: Callable[[Upload], Conversion],
    ) -> ModelVersion | Conversion: ...

    async def push(
        self,
        request: PushRequest,
        body: AsyncIterator[bytes],
        convert: Callable[[Upload], Conversion] | None = None,
    ) -> ModelVersion | Conversion:
        """The one push path: stream ``body`` in; ONNX becomes a version at once, any other
        format is handed to ``convert`` (which starts a conversion job). Content already
        pushed under this name is refused unless the request allows a duplicate."""
        upload = await self.upload(request, body)
        if not request.allow_duplicate:
            await run_in_threadpool(
                self._refuse_pushed_before, request.name, upload.artifact.digest
            )
        if upload.signature is not None and not request.processed:
            return await run_in_threadpool(
                self.record, request, upload.artifact, upload.signature, "onnx", None, None
            )
        if convert is None:
            raise UnsupportedModel(
                f"{DETECTED_FORMATS[upload.source_format]} models are converted on push; "
                "push through the API or CLI"
            )
        try:
            return convert(upload)
        except BaseException:
            # refused before a job began (e.g. its extra is not installed): keep no orphan
            await run_in_threadpool(self._drop_blob_if_unused, upload.artifact.digest)
            raise

    def record(
        self,
        request: PushRequest,
        artifact: Artifact,
        signature: Signature,
        source_format: str,
        source_digest: str | None,
        report: dict[str, Any] | None,
    ) -> ModelVersion:
        """Record a new version. Its number comes from one atomic increment of the model's
        counter, which also holds the model's row until the version is written: concurrent
        pushes are numbered one after another, never fail for it, and two pushes of the same
        bytes cannot both pass the duplicate check (on SQLite and on PostgreSQL alike)."""
        for _attempt in range(3):
            self._ensure_model(request.name)
            with self._sessions.begin() as session:
                taken = session.execute(
                    update(ModelRow)
                    .where(ModelRow.name == request.name)
                    .values(next_version=ModelRow.next_version + 1)
                    .returning(ModelRow.id, ModelRow.next_version)
                    .execution_options(synchronize_session=False)
                ).one_or_none()
                if taken is None:
                    continue  # the model was deleted meanwhile: made again on the next turn
                model_id, after = taken
                if not request.allow_duplicate:
                    self._refuse_duplicate(session, request.name, artifact.digest, source_digest)
                row = VersionRow(
                    model_id=model_id,
                    version=after - 1,
                    digest=artifact.digest,
                    size=artifact.size,
                    source_format=source_format,
                    signature=signature.to_dict(),
                    description=request.description,
                    tags=request.tags,
                    created_by=request.created_by,
                    created_at=now(),
                    parent=request.parent,
                    source_digest=source_digest,
                    report=report,
                    input_stats=request.input_stats,
                    samples_digest=request.samples_digest,
                )
                session.add(row)
                session.flush()
                return to_version(row)
        raise Conflict(f"{request.name!r} was deleted while this push recorded it; push again")

    def _ensure_model(self, name: str) -> None:
        with self._sessions() as session:
            if session.scalar(select(ModelRow.id).where(ModelRow.name == name)) is not None:
                return
        try:
            with self._sessions.begin() as session:
                session.add(ModelRow(name=name, description="", next_version=1, created_at=now()))
        except IntegrityError:
            pass  # a concurrent push made it

    # ---- reads ------------------------------------------------------------------------------
    def list_models(self) -> list[Model]:
        with self._sessions() as session:
            rows = session.scalars(
                select(ModelRow)
                .options(selectinload(ModelRow.versions), selectinload(ModelRow.aliases))
                .order_by(ModelRow.name)
            ).all()
            return [to_model(r) for r in rows]

    def get_model(self, name: str) -> tuple[Model, list[ModelVersion]]:
        with self._sessions() as session:
            row = self._model_row(session, name)
            return to_model(row), [to_version(v) for v in row.versions]

    def resolve(self, ref: ModelRef) -> ModelVersion:
        """The version a reference names: exact, by alias, or the latest."""
        with self._sessions() as session:
            return to_version(self._version_row(session, ref))

    # ---- aliases ----------------------------------------------------------------------------
    def set_alias(self, name: str, version: int, alias: str) -> ModelVersion:
        if problem := alias_problem(alias):
            raise InvalidInput(problem)
        with self._sessions.begin() as session:
            row = self._version_row(session, ModelRef(name, version=version))
            existing = session.get(AliasRow, (row.model_id, alias))
            if existing is None:
                session.add(AliasRow(model_id=row.model_id, alias=alias, version_id=row.id))
            else:
                existing.version_id = row.id
            session.flush()
            session.refresh(row.model)
            return to_version(row)

    def delete_alias(self, name: str, alias: str) -> None:
        with self._sessions.begin() as session:
            model = self._model_row(session, name)
            existing = session.get(AliasRow, (model.id, alias))
            if existing is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            session.delete(existing)

    # ---- deletion ---------------------------------------------------------------------------
    def delete_version(self, name: str, version: int) -> None:
        with self._sessions.begin() as session:
            row = self._version_row(session, ModelRef(name, version=version))
            self._refuse_if_deployed(session, [row.id], f"{name}:{version}")
            digests = {row.digest, row.source_digest, row.samples_digest}
            session.execute(delete(AliasRow).where(AliasRow.version_id == row.id))
            session.delete(row)
        for digest in digests:
            self._drop_blob_if_unused(digest)

    def delete_model(self, name: str) -> None:
        with self._sessions.begin() as session:
            model = self._model_row(session, name)
            self._refuse_if_deployed(session, [v.id for v in model.versions], name)
            digests = {
                d for v in model.versions for d in (v.digest, v.source_digest, v.samples_digest)
            }
            session.execute(delete(AliasRow).where(AliasRow.model_id == model.id))
            for v in list(model.versions):
                session.delete(v)
            session.delete(model)
        for digest in digests:
            self._drop_blob_if_unused(digest)

    def collect_garbage(self) -> int:
        """Remove staging leftovers and blobs no version refers to (run at start, before any
        push can be in flight). Returns how many files were removed."""
        removed = self._blobs.clean_staging()
        with self._sessions() as session:
            used = set(session.scalars(select(VersionRow.digest)).all())
            for column in (VersionRow.source_digest, VersionRow.samples_digest):
                used |= {d for d in session.scalars(select(column)).all() if d}
        for digest in list(self._blobs.digests()):
            if digest not in used:
                self._blobs.delete(digest)
                removed += 1
        return removed

    # ---- helpers ----------------------------------------------------------------------------
    def _drop_blob_if_unused(self, digest: str | None) -> None:
        if digest is None:
            return
        refers = (
            (VersionRow.digest == digest)
            | (VersionRow.source_digest == digest)
            | (VersionRow.samples_digest == digest)
        )
        converting = (ConversionRow.source_digest == digest) & (ConversionRow.state == "running")
        with self._sessions() as session:
            versions = session.scalar(select(func.count()).select_from(VersionRow).where(refers))
            jobs = session.scalar(select(func.count()).select_from(ConversionRow).where(converting))
        if not versions and not jobs:
            self._blobs.delete(digest)

    def _refuse_pushed_before(self, name: str, digest: str) -> None:
        """Refuse content a version of ``name`` has, or a running conversion of it started from
        (checked again when the version is recorded)."""
        with self._sessions() as session:
            self._refuse_duplicate(session, name, digest, None)
            running = session.scalar(
                select(ConversionRow.id).where(
                    ConversionRow.model == name,
                    ConversionRow.source_digest == digest,
                    ConversionRow.state == "running",
                )
            )
        if running is not None:
            raise Conflict(
                f"the same content is being converted for {name} already (conversion {running}); "
                f"follow it with `modelplane conversions show {running}`, or push with "
                "--allow-duplicate to make another version anyway"
            )

    @staticmethod
    def _refuse_duplicate(
        session: Session, name: str, digest: str, source_digest: str | None
    ) -> None:
        sources = {d for d in (digest, source_digest) if d}
        same = VersionRow.digest.in_(sources) | VersionRow.source_digest.in_(sources)
        found = session.scalar(
            select(VersionRow.version)
            .join(ModelRow, VersionRow.model_id == ModelRow.id)
            .where(ModelRow.name == name, same)
            .order_by(VersionRow.version)
            .limit(1)
        )
        if found is not None:
            raise Conflict(
                f"same content as {name}:{found} (sha256:{digest[:12]}); nothing was pushed. "
                f"Point an alias at {name}:{found}, or push with --allow-duplicate "
                "(allow_duplicate=true) to make a new version anyway"
            )

    @staticmethod
    def _refuse_if_deployed(session: Session, version_ids: list[int], what: str) -> None:
        """Refuse to delete versions a deployment serves. The message gives a count, never the
        deployments' names: the caller's key may not be allowed to see them."""
        serving = DeploymentRow.version_id.in_(version_ids)
        # the version a deployment falls back to while its newer one is not ready yet
        stable = DeploymentRow.stable_version_id.in_(version_ids)
        candidate = DeploymentRow.candidate_version_id.in_(version_ids)  # a canary or shadow
        names = session.scalars(
            select(DeploymentRow.name).where(serving | stable | candidate)
        ).all()
        if names:
            count = "1 deployment" if len(names) == 1 else f"{len(names)} deployments"
            raise Conflict(
                f"{what} is used by {count}; undeploy or redeploy them first (`modelplane "
                "deployments list` shows those your key may see)"
            )
        # what a rollback would have returned to is gone with it: a rollback then says so
        session.execute(
            update(DeploymentRow)
            .where(DeploymentRow.previous_version_id.in_(version_ids))
            .values(previous_version_id=None)
        )

    @staticmethod
    def _model_row(session: Session, name: str) -> ModelRow:
        row = session.scalar(
            select(ModelRow)
            .where(ModelRow.name == name)
            .options(selectinload(ModelRow.versions), selectinload(ModelRow.aliases))
        )
        if row is None:
            raise missing_model(name)
        return row

    def _version_row(self, session: Session, ref: ModelRef) -> VersionRow:
        model = self._model_row(session, ref.name)
        if ref.alias is not None:
            alias = next((a for a in model.aliases if a.alias == ref.alias), None)
            if alias is None:
                known = ", ".join(sorted(a.alias for a in model.aliases)) or "none"
                raise NotFound(f"model {ref.name!r} has no alias {ref.alias!r} (aliases: {known})")
            return next(v for v in model.versions if v.id == alias.version_id)
        if not model.versions:
            raise NotFound(f"model {ref.name!r} has no versions")
        if ref.version is None:
            return model.versions[-1]
        found = next((v for v in model.versions if v.version == ref.version), None)
        if found is None:
            known = ", ".join(str(v.version) for v in model.versions)
            raise NotFound(f"model {ref.name!r} has no version {ref.version} (versions: {known})")
        return found

    @property
    def blobs(self) -> BlobStore:
        return self._blobs
