"""The registry on real SQLite and on a real PostgreSQL, with a real blob folder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import sqlalchemy as sa

from modelplane.domain import Artifact, ModelRef, ModelVersion
from modelplane.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, UnsupportedModel
from modelplane.registry.blobs import LocalBlobStore
from modelplane.registry.db import make_engine, make_sessions, migrate
from modelplane.registry.deployments import DeploymentStore
from modelplane.registry.service import PushRequest, RegistryService
from modelplane.settings import Settings


async def chunks(data: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


pytestmark = pytest.mark.databases

Stores = tuple[RegistryService, DeploymentStore, LocalBlobStore]


@pytest.fixture
def stores(settings: Settings) -> Iterator[Stores]:
    settings.home.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    migrate(engine)  # idempotent
    sessions = make_sessions(engine)
    blobs = LocalBlobStore(settings.blob_dir)
    registry = RegistryService(sessions, blobs, max_upload=10_000)
    yield registry, DeploymentStore(sessions, registry), blobs
    engine.dispose()


async def test_versions_are_numbered_and_content_addressed(stores, iris_bytes) -> None:
    registry, _, blobs = stores
    first = await registry.push(PushRequest("iris", description="v1"), chunks(iris_bytes))
    second = await registry.push(
        PushRequest("iris", tags={"a": "b"}, allow_duplicate=True), chunks(iris_bytes)
    )
    assert (first.version, second.version) == (1, 2)
    assert first.artifact.digest == second.artifact.digest
    assert list(blobs.digests()) == [first.artifact.digest]
    assert blobs.verify(first.artifact.digest)
    assert first.signature.inputs[0].to_dict() == {
        "name": "float_input",
        "datatype": "FP32",
        "shape": [-1, 4],
    }
    assert registry.resolve(ModelRef("iris")).version == 2
    assert registry.resolve(ModelRef("iris", version=1)).description == "v1"
    assert registry.resolve(ModelRef("iris", version=2)).tags == {"a": "b"}


async def test_aliases_point_at_versions(stores, iris_bytes) -> None:
    registry, _, _ = stores
    await registry.push(PushRequest("iris"), chunks(iris_bytes))
    await registry.push(PushRequest("iris", allow_duplicate=True), chunks(iris_bytes))
    registry.set_alias("iris", 1, "production")
    assert registry.resolve(ModelRef("iris", alias="production")).version == 1
    registry.set_alias("iris", 2, "production")
    resolved = registry.resolve(ModelRef("iris", alias="production"))
    assert resolved.version == 2
    assert resolved.aliases == ("production",)
    with pytest.raises(NotFound, match="no alias 'staging'"):
        registry.resolve(ModelRef("iris", alias="staging"))
    with pytest.raises(InvalidInput, match="invalid alias"):
        registry.set_alias("iris", 1, "7")


async def test_a_bad_upload_leaves_nothing_behind(stores, iris_bytes, settings) -> None:
    registry, _, blobs = stores
    with pytest.raises(UnsupportedModel, match="not a valid ONNX model"):
        await registry.push(PushRequest("junk"), chunks(b"this is not onnx"))
    with pytest.raises(PayloadTooLarge, match="larger than the limit"):
        await registry.push(PushRequest("big"), chunks(b"x" * 20_000))
    with pytest.raises(UnsupportedModel, match="empty"):
        await registry.push(PushRequest("empty"), chunks(b""))
    with pytest.raises(InvalidInput, match="invalid model name"):
        await registry.push(PushRequest("../etc"), chunks(iris_bytes))
    assert registry.list_models() == []
    assert list(blobs.digests()) == []
    assert list((settings.blob_dir / "staging").iterdir()) == []


async def test_unsupported_formats_say_how_to_proceed(stores, iris_bytes) -> None:
    registry, _, _ = stores
    with pytest.raises(UnsupportedModel, match="the file is a onnx model; use --format auto"):
        await registry.push(PushRequest("m", source_format="torch"), chunks(iris_bytes))
    with pytest.raises(InvalidInput, match="unknown format"):
        await registry.push(PushRequest("m", source_format="pickle"), chunks(iris_bytes))


async def test_pickles_are_refused_unless_trusted(stores, settings) -> None:
    import pickle

    registry, _, blobs = stores
    payload = pickle.dumps({"not": "a model"}, protocol=4)
    with pytest.raises(UnsupportedModel, match="--trust-pickle"):
        await registry.upload(PushRequest("m"), chunks(payload))
    assert list(blobs.digests()) == []
    upload = await registry.upload(PushRequest("m", trust_pickle=True), chunks(payload))
    assert upload.source_format == "sklearn"
    assert upload.signature is None


async def test_deployed_versions_cannot_be_deleted(stores, iris_bytes) -> None:
    registry, deployments, blobs = stores
    await registry.push(PushRequest("iris"), chunks(iris_bytes))
    await registry.push(PushRequest("iris"), chunks(iris_bytes[:-1] + b"\x00"))
    deployments.apply(ModelRef("iris", version=1), replicas=1)
    with pytest.raises(Conflict, match="used by 1 deployment;"):
        registry.delete_version("iris", 1)
    with pytest.raises(Conflict):
        registry.delete_model("iris")
    registry.delete_version("iris", 2)
    assert len(list(blobs.digests())) == 1
    deployments.delete("iris")
    registry.delete_model("iris")
    assert registry.list_models() == []
    assert list(blobs.digests()) == []


async def test_version_numbers_are_never_reused(stores, iris_bytes) -> None:
    registry, _, _ = stores
    await registry.push(PushRequest("iris"), chunks(iris_bytes))
    await registry.push(PushRequest("iris", allow_duplicate=True), chunks(iris_bytes))
    registry.delete_version("iris", 2)
    with pytest.raises(Conflict, match=r"same content as iris:1 \(sha256:"):
        await registry.push(PushRequest("iris"), chunks(iris_bytes))
    third = await registry.push(PushRequest("iris", allow_duplicate=True), chunks(iris_bytes))
    assert third.version == 3


async def test_garbage_collection_removes_orphans_only(stores, iris_bytes, settings) -> None:
    registry, _, blobs = stores
    kept = await registry.push(PushRequest("iris"), chunks(iris_bytes))
    # what a crash leaves: a staging file, and a blob whose version was never recorded
    (settings.blob_dir / "staging" / "dead.part").write_bytes(b"partial")
    orphan = blobs.stage(1000)
    orphan.write(b"orphan bytes")
    orphan_digest = orphan.commit().digest
    assert registry.collect_garbage() == 2
    assert list(blobs.digests()) == [kept.artifact.digest]
    assert orphan_digest != kept.artifact.digest


async def test_deployments_are_desired_state(stores, iris_bytes) -> None:
    registry, deployments, _ = stores
    await registry.push(PushRequest("iris"), chunks(iris_bytes))
    registry.set_alias("iris", 1, "production")
    record = deployments.apply(ModelRef("iris", alias="production"), replicas=2)
    assert (record.deployment.name, record.deployment.version) == ("iris", 1)
    record = deployments.apply(ModelRef("iris"), replicas=3, name="iris-canary")
    assert [d.deployment.name for d in deployments.list()] == ["iris", "iris-canary"]
    with pytest.raises(InvalidInput, match="between 0 and 64"):
        deployments.apply(ModelRef("iris"), replicas=100)
    with pytest.raises(NotFound, match="not found"):
        deployments.apply(ModelRef("nope"), replicas=1)


async def test_a_duplicate_is_refused_when_recorded_too_not_only_when_checked(stores, iris_bytes):
    # two pushes of the same bytes both uploaded before either is recorded (a race): the check
    # made in the recording transaction refuses the second
    registry, _, _ = stores
    first = await registry.upload(PushRequest("iris"), chunks(iris_bytes))
    second = await registry.upload(PushRequest("iris"), chunks(iris_bytes))
    assert first.signature is not None
    registry.record(PushRequest("iris"), first.artifact, first.signature, "onnx", None, None)
    with pytest.raises(Conflict, match="same content as iris:1"):
        registry.record(PushRequest("iris"), second.artifact, first.signature, "onnx", None, None)
    assert [v.version for v in registry.get_model("iris")[1]] == [1]


async def test_content_being_converted_is_neither_pushed_twice_nor_dropped(stores, settings):
    from datetime import UTC, datetime

    from modelplane.registry.db import make_engine, make_sessions
    from modelplane.registry.tables import ConversionRow

    registry, _, blobs = stores
    payload = b"\x80\x04K\x01."  # a pickle, held as a conversion's source
    upload = await registry.upload(PushRequest("m", trust_pickle=True), chunks(payload))
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessions(engine)
    stamp = datetime.now(UTC)
    with sessions.begin() as session:
        session.add(ConversionRow(
            id="c1", model="m", source_format="sklearn", source_digest=upload.artifact.digest,
            state="running", stage="convert", created_by="t", created_at=stamp, updated_at=stamp,
        ))  # fmt: skip
    with pytest.raises(Conflict, match=r"being converted for m already \(conversion c1\)"):
        await registry.push(
            PushRequest("m", trust_pickle=True),
            chunks(payload),
            convert=lambda _: None,  # never reached
        )

    # a failed push of the same bytes (here: under another name, refused by its convert hook)
    # keeps the blob the running conversion reads
    def refuse(_: object) -> None:
        raise UnsupportedModel("no converter")

    with pytest.raises(UnsupportedModel):
        await registry.push(PushRequest("n", trust_pickle=True), chunks(payload), convert=refuse)
    assert blobs.path(upload.artifact.digest).exists()
    engine.dispose()


async def test_a_language_model_reserves_its_weights_and_kv_cache(stores, iris_bytes) -> None:
    from modelplane.domain.signature import GENERATION_SIGNATURE
    from modelplane.registry.deployments import Scheduling

    registry, deployments, _ = stores
    first = await registry.push(PushRequest("iris"), chunks(iris_bytes))
    # a version as a language model's conversion records it (1 GB of weights, context 1024)
    memory = {"weights_bytes": 1 << 30, "kv_bytes_per_token": 1 << 16, "context_length": 1024}
    registry.record(PushRequest("llm"), first.artifact, GENERATION_SIGNATURE, "transformers",
                    None, {"passed": True, "memory": memory})  # fmt: skip
    sized = deployments.apply(ModelRef("llm"), config={"max_batch_size": 4})
    # 1024 MB of weights + 4 slots x 1024 tokens x 64 KB + the process
    assert sized.deployment.resources.memory_mb == 1024 + 256 + 300
    smaller = deployments.apply(ModelRef("llm"), name="llm-2",
                                scheduling=Scheduling(resources={"memory_mb": 700}))  # fmt: skip
    assert smaller.deployment.resources.memory_mb == 700  # asked for: kept
    plain = deployments.apply(ModelRef("iris"))
    assert plain.deployment.resources.memory_mb == 512  # not a language model: the default


async def test_concurrent_pushes_of_one_model_all_get_a_version(stores, iris_bytes) -> None:
    """Twenty pushes at once (new model, then existing): none fails for numbering."""
    registry, _, _ = stores

    async def push(i: int) -> int:
        request = PushRequest("iris", description=str(i), allow_duplicate=True)
        version: ModelVersion = await registry.push(request, chunks(iris_bytes, size=4096))
        return version.version

    first = await asyncio.gather(*(push(i) for i in range(20)))
    again = await asyncio.gather(*(push(i) for i in range(20)))
    assert sorted(first + again) == list(range(1, 41))
    versions = registry.get_model("iris")[1]
    assert [v.version for v in versions] == list(range(1, 41))
    assert sorted(int(v.description) for v in versions) == sorted([*range(20), *range(20)])


async def test_a_version_larger_than_2_gib_is_recorded(stores, iris_bytes) -> None:
    """A language model's bundle passes 2 GiB: its size is kept whole on both databases."""
    registry, _, _ = stores
    upload = await registry.upload(PushRequest("llm"), chunks(iris_bytes))
    big = Artifact(upload.artifact.digest, 5 * 2**30)
    assert upload.signature is not None
    version = registry.record(PushRequest("llm"), big, upload.signature, "onnx", None, None)
    assert version.artifact.size == 5 * 2**30
    assert registry.resolve(ModelRef("llm")).artifact.size == 5 * 2**30


def test_the_migrations_build_the_schema_the_code_uses(settings: Settings) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from modelplane.registry.tables import Base

    settings.home.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    sqlite = engine.dialect.name == "sqlite"

    def differ(_context, _column, _declared_column, inspected, declared) -> bool | None:
        if sqlite and isinstance(inspected, sa.Integer) and isinstance(declared, sa.Integer):
            return False  # SQLite's integers are all 64-bit
        return None  # alembic's own comparison

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": differ})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []
