"""The composition root of ``modelplane serve``: builds every part and wires them together."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from starlette.types import ASGIApp

from modelplane import __version__, backups
from modelplane.api.app import create_app
from modelplane.api.services import Services
from modelplane.cluster.executor import ReplicaExecutor
from modelplane.cluster.local import LocalExecutor
from modelplane.domain import Role
from modelplane.registry.audit import AuditLog
from modelplane.registry.blobs import LocalBlobStore
from modelplane.registry.cluster import ClusterStore, ServerInfo
from modelplane.registry.conversions import ConversionService, load_checker
from modelplane.registry.db import make_engine, make_sessions, migrate
from modelplane.registry.deployments import DeploymentStore
from modelplane.registry.keys import KeySpec, KeyStore, flush_usage_forever
from modelplane.registry.nodes import NodeStore
from modelplane.registry.s3blobs import S3BlobStore, StorageUrlError
from modelplane.registry.service import RegistryService
from modelplane.scheduler.cluster_load import ClusterLoad
from modelplane.scheduler.controller import Controller
from modelplane.scheduler.leader import Leadership, await_successor, follow_leader, share_state
from modelplane.scheduler.rollouts import Rollouts
from modelplane.security.blobkeys import BlobKeys, MasterKeyError, load_master_key
from modelplane.security.detection import AttackDetector, rules_from
from modelplane.security.limiter import Quotas
from modelplane.security.replica_tls import derive
from modelplane.security.tls import TlsFileError, TlsFiles, grpc_credentials, tls_files
from modelplane.security.tls import uvicorn_options as tls_options
from modelplane.serving.gateway import Gateway
from modelplane.serving.grpc import create_grpc_server
from modelplane.serving.heap import (
    freeze_startup_objects,
    one_malloc_arena,
    release_freed_memory_forever,
)
from modelplane.serving.http_protocol import GatheringHttpProtocol
from modelplane.serving.routing import RoutingTable
from modelplane.settings import Settings
from modelplane.telemetry.audit import AuditCollector, AuditTrail
from modelplane.telemetry.logs import Flusher, LogWriter, json_logging
from modelplane.telemetry.metrics import Metrics

log = logging.getLogger("modelplane")


@dataclass(frozen=True, slots=True)
class Platform:
    services: Services
    gateway: Gateway
    app: ASGIApp
    admin_key_created: bool
    engine: Engine  # the database's connection pool: disposed when the server stops


def ensure_admin_key(keys: KeyStore, path: Path) -> bool:
    """On first start, create an admin key and write it to ``path`` (mode 0600)."""
    if path.exists() and keys.count() > 0:
        return False
    if keys.count() > 0 and not path.exists():
        return False  # keys exist; the operator removed the file on purpose
    _, secret = keys.create(KeySpec(Role.ADMIN, "admin"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)
    return True


def make_executor(
    settings: Settings,
    artifact_keys: Callable[[str], bytes | None] | None = None,
    shared_secret: bytes | None = None,
    artifact_source: Callable[[str], dict[str, str]] | None = None,
) -> ReplicaExecutor:
    """The executor ``settings`` ask for; with ``shared_secret`` its replica credentials are
    the ones every server sharing the database derives (see ``shared_replica_secret``); with
    ``artifact_source``, Ray nodes fetch artifacts from the bucket themselves."""
    if settings.scheduler.executor == "ray":
        from modelplane.cluster.ray import RayExecutor

        return RayExecutor(settings, artifact_keys, shared_secret, artifact_source)
    token = derive(shared_secret, b"replica token").hex() if shared_secret else None
    return LocalExecutor(settings, artifact_keys, token)


def server_id(home: Path) -> str:
    """This server's name among those sharing a database, kept in its home: a restarted server
    is the same one, and takes back its own lease at once instead of waiting for it to run out."""
    path = home / "server.id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        name = uuid.uuid4().hex[:12]
        path.write_text(name + "\n")
        return name


def shared_replica_secret(settings: Settings, keys: BlobKeys) -> bytes | None:
    """On a shared database every server's gateway must reach every replica, and a new leader
    adopt its predecessor's Ray replicas: their token and CA are derived from the master key
    the servers share (None on SQLite: one server, credentials of its own)."""
    if settings.resolved_database_url.startswith("sqlite"):
        return None
    return keys.master.key


def open_blob_store(settings: Settings) -> tuple[LocalBlobStore | S3BlobStore, BlobKeys]:
    """The blob store with its data keys, opened with the master key: a local folder, or a
    bucket (``MODELPLANE_STORAGE_URL``). A master key that is malformed or not this
    registry's, or a bucket that cannot be reached, ends ``serve`` with a one-line error."""
    secret = settings.master_key.get_secret_value() if settings.master_key else None
    url = settings.storage_url
    try:
        master, pending = load_master_key(settings.master_key_path, secret)
        elsewhere = None if url is None else f"in {url}"
        keys = BlobKeys(settings.blob_dir / "keys", master, pending, elsewhere)
        if url is None:
            return LocalBlobStore(settings.blob_dir, keys), keys
        store = S3BlobStore(url, settings.blob_dir, keys)
        store.check()
    except (MasterKeyError, StorageUrlError) as exc:
        raise SystemExit(f"error: {exc}") from None
    return store, keys


DEMO_READY_TIMEOUT_S = 120.0
HANDOVER_PEERS_S = 10.0  # a server seen this recently can take over from one stopping


async def _wait_until_routed(table: RoutingTable, name: str, timeout_s: float) -> bool:
    """Whether ``name`` has a ready replica within ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        route = table.get(name)
        if route is not None and route.endpoints:
            return True
        await asyncio.sleep(0.1)
    return False


def build(settings: Settings, announce: Callable[[], None] | None = None) -> Platform:
    """Every part of the platform, wired. ``announce`` runs once startup is complete (the
    demo, when asked for, serving), just before the server takes requests."""
    settings.home.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o700)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    sessions = make_sessions(engine)
    blobs, blob_keys = open_blob_store(settings)
    registry = RegistryService(
        sessions,
        blobs,
        settings.registry.max_upload_bytes,
        settings.convert.max_unpack_ratio,
        load_checker(settings),
    )
    removed = registry.collect_garbage()
    backups.clean_snapshots(settings.work_dir)
    if removed:
        log.info("removed %d leftover file(s) from an interrupted write", removed)
    sealed = blobs.seal_plaintext()
    if sealed:
        log.info("encrypted %d blob(s) an earlier version kept in the clear", sealed)
    deployments = DeploymentStore(sessions, registry)
    keys = KeyStore(sessions)
    nodes = NodeStore(sessions)
    created = ensure_admin_key(keys, settings.admin_key_path)
    # replicas on Ray fetch artifacts from the bucket themselves: the server hands them where
    # (and its own copy's path, used only where a node shares this machine's files)
    blob_path: Callable[[str], Path] = blobs.path
    source: Callable[[str], dict[str, str]] | None = None
    if isinstance(blobs, S3BlobStore) and settings.scheduler.executor == "ray":
        blob_path, source = blobs.cached_path, blobs.locate
    executor = make_executor(
        settings, blobs.data_key, shared_replica_secret(settings, blob_keys), source
    )
    table = RoutingTable()
    metrics = Metrics(CollectorRegistry(), settings.telemetry.request_metrics)
    scheme = "https" if settings.server.tls_cert is not None else "http"
    me = ServerInfo(server_id(settings.home), f"{scheme}://{settings.server.host}:"
                    f"{settings.server.port}", time.time())  # fmt: skip
    releasing: set[asyncio.Task[None]] = set()

    def on_leadership(leading: bool) -> None:
        if leading:  # serve the previous leader's replicas until this server's are ready
            controller.inherit(dict(table.routes))
        else:  # the replicas this server started go: the new leader starts its own
            task = asyncio.get_running_loop().create_task(controller.release_all())
            releasing.add(task)
            task.add_done_callback(releasing.discard)

    cluster = ClusterStore(sessions)
    leadership = Leadership(cluster, me, on_change=on_leadership)
    gateway = Gateway(
        table, executor.token, settings.serving.request_timeout_s, metrics, executor.replica_tls
    )
    audit_log = AuditLog(sessions)
    audit = AuditTrail(audit_log)
    metrics.registry.register(AuditCollector(audit))  # dropped entries, in /metrics
    metrics.registry.register(gateway.watch)  # how a deployment's two versions agree

    def decided(action: str, deployment: str, detail: str) -> None:
        audit.record(action, key_id=None, key_name="controller", source="controller",
                     target=deployment, result="ok", detail=detail)  # fmt: skip

    controller = Controller(
        deployments,
        executor,
        table,
        blob_path,
        interval_s=settings.scheduler.reconcile_interval_s,
        max_starts_per_minute=settings.scheduler.max_restarts_per_minute,
        drain_timeout_s=settings.scheduler.drain_timeout_s,
        nodes=nodes,
        on_step=metrics.reconcile.observe,
        may_act=lambda: leadership.leading,
        share=share_state(cluster, leadership),
        rollouts=Rollouts(deployments, gateway.watch, decided),
    )
    # the autoscaler counts the traffic through every server, and any server's request wakes a
    # deployment scaled to zero
    cluster_load = ClusterLoad(gateway, cluster, me.id, lambda: leadership.leading, controller.kick)
    controller.load = cluster_load

    def on_demand() -> None:
        controller.kick()
        cluster_load.kick()

    gateway.on_demand = on_demand
    conversions = ConversionService(sessions, registry, blobs, settings, metrics)
    interrupted = conversions.fail_interrupted()
    if interrupted:
        log.info("%d conversion(s) were interrupted by the last stop; push them again", interrupted)
    detector = AttackDetector(rules_from(settings.detection), metrics, audit)
    quotas = Quotas(metrics.key_limited, audit)  # one holder: HTTP and gRPC count together
    services = Services(
        settings, registry, deployments, keys, controller, conversions, gateway, metrics, nodes,
        audit=audit, audit_log=audit_log, blob_keys=blob_keys, detector=detector,
        quotas=quotas, leadership=leadership,
    )  # fmt: skip

    grpc_address = f"{settings.server.host}:{settings.server.grpc_port}"
    tls = _tls(settings)

    shared = not settings.resolved_database_url.startswith("sqlite")  # several servers may run

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # grpc.aio binds to the running loop, so the server is made here, not in build()
        grpc_server = create_grpc_server(
            gateway, keys, __version__, settings.serving.max_request_bytes,
            detector=detector, audit=audit, quotas=quotas,
        )  # fmt: skip
        try:
            if tls is None:
                grpc_server.add_insecure_port(grpc_address)
            else:
                grpc_server.add_secure_port(grpc_address, grpc_credentials(tls))
        except RuntimeError:
            raise RuntimeError(
                f"cannot listen for gRPC on {grpc_address}; is the port in use? "
                "Choose another with --grpc-port"
            ) from None
        await grpc_server.start()
        audit.start()
        await leadership.try_once()  # a lone server leads from its first reconcile
        leadership.start()
        controller.start()
        following = asyncio.create_task(follow_leader(cluster, table, controller.adopt, leadership))
        # on SQLite this is the only server: no load to exchange
        exchanging = asyncio.create_task(cluster_load.run()) if shared else None
        usage = asyncio.create_task(flush_usage_forever(keys))  # keys' last use, in batches
        # freed uploads and parsed models go back to the system, not kept by malloc
        release = asyncio.create_task(release_freed_memory_forever())
        if settings.demo:
            from modelplane.demo import ensure_demo

            try:
                await asyncio.to_thread(ensure_demo, registry, deployments)
                demo_set_up = True
            except Exception:
                log.exception("could not set up the iris demo; the server runs without it")
                demo_set_up = False
            controller.kick()
            # "up" means the demo answers: the tour's first command finds it ready
            if demo_set_up and not await _wait_until_routed(table, "iris", DEMO_READY_TIMEOUT_S):
                log.warning("the iris demo is not serving yet; see `modelplane deployments "
                            "status iris`")  # fmt: skip
        if announce is not None:
            announce()
        freeze_startup_objects()  # no full collection walks them again: no pause under load
        try:
            yield
        finally:
            await grpc_server.stop(grace=2.0)
            usage.cancel()
            release.cancel()
            following.cancel()
            if exchanging is not None:
                exchanging.cancel()
            if shared:
                await hand_over()
            await controller.stop()
            await leadership.stop()  # after the controller: another server takes over at once
            await gateway.close()
            await asyncio.to_thread(audit.stop)  # what is still queued is written
            engine.dispose()

    async def hand_over() -> None:
        """A clean stop on a shared database: replicas that outlive this server are left to
        the next leader; ones that stop with it stop only once the next leader serves every
        deployment with its own (at most the drain timeout; at once with no other server)."""
        await controller.pause()
        if executor.outlives_server:
            await controller.release_all()
            return
        others = await asyncio.to_thread(cluster.servers, time.time() - HANDOVER_PEERS_S)
        if not leadership.leading or not [s for s in others if s.id != me.id]:
            return
        leaving, routes = {r.id for r in controller.view.replicas}, list(table.routes.values())
        await leadership.stop()  # the next server takes the lease at its next try
        timeout = settings.scheduler.drain_timeout_s
        if await await_successor(cluster, leaving, routes, timeout):
            log.info("handed over: the next leader serves every deployment; stopping replicas")
        else:
            log.warning("no other server served every deployment within %.0f s; stopping "
                        "replicas anyway", timeout)  # fmt: skip

    app = create_app(services, gateway, lifespan)
    return Platform(services, gateway, app, created, engine)


def _tls(settings: Settings) -> TlsFiles | None:
    """The server's TLS files, checked; a bad one ends ``serve`` with a one-line error."""
    server = settings.server
    try:
        return tls_files(server.tls_cert, server.tls_key, server.tls_client_ca)
    except TlsFileError as exc:
        raise SystemExit(f"error: {exc}") from None


def banner(settings: Settings, created: bool) -> str:
    tls = settings.server.tls_cert is not None
    url = f"{'https' if tls else 'http'}://{settings.server.host}:{settings.server.port}"
    grpc = f"{settings.server.host}:{settings.server.grpc_port}"
    key = settings.admin_key_path
    first = "created on this first start" if created else "from an earlier start"
    return f"""
modelplane is up.
  Dashboard     {url}/          (sign in with the admin key)
  API docs      {url}/docs
  V2 inference  {url}/v2/models/<name>/infer   (gRPC{" over TLS" if tls else ""}: {grpc})
  Admin key     {key}   ({first}; keep it secret){_tls_note(settings)}

Try it:
  curl -s{_curl_tls(settings)} -H "Authorization: Bearer $(cat {key})" \\
       -H 'Content-Type: application/json' -d @- {url}/v2/models/iris/infer <<'JSON'
{{"inputs":[{{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}}]}}
JSON

  python -c "import modelplane; print(modelplane.Client().infer('iris', \\
      {{'float_input': [[5.1, 3.5, 1.4, 0.2]]}}))"
"""


def _tls_note(settings: Settings) -> str:
    server = settings.server
    if server.tls_cert is None:
        return ""
    clients = (
        f"clients need a certificate signed by {server.tls_client_ca}"
        if server.tls_client_ca
        else "no client certificates"
    )
    note = f"\n  TLS           {server.tls_cert}   ({clients})"
    return note + "\n  Clients       MODELPLANE_URL=https://... MODELPLANE_CA_BUNDLE=<CA file>"


def _curl_tls(settings: Settings) -> str:
    return " --cacert <CA file>" if settings.server.tls_cert is not None else ""


def serve(settings: Settings) -> None:
    one_malloc_arena()  # before any thread: the memory freed after a push can be handed back
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # the log's last lines are written out however serve ends
    with (
        LogWriter(settings.log_dir / "serve.log") as writer,
        json_logging(writer, "serve"),
        Flusher(writer),
    ):
        # bound first: a port in use is said before anything starts, and the banner (printed
        # once startup is done) never announces a server that cannot listen
        tls = _tls(settings)
        sock = _bind(settings.server.host, settings.server.port, "--port")
        _bind(settings.server.host, settings.server.grpc_port, "--grpc-port").close()  # free?

        def announce() -> None:
            print(banner(settings, platform.admin_key_created), flush=True)

        platform = build(settings, announce)
        config = uvicorn.Config(
            platform.app,
            log_level="warning",
            access_log=False,
            # measured on the hot path (py-spy): no proxy-header rewriting (no proxy by default),
            # no Server/Date header per response
            proxy_headers=False,
            server_header=False,
            date_header=False,
            http=GatheringHttpProtocol,  # one send per response, not two
            # SIGTERM: stop listening at once, let requests in flight finish, within the drain
            # timeout; then the replicas go (or are handed over: see build's hand_over)
            timeout_graceful_shutdown=int(settings.scheduler.drain_timeout_s),
            **(tls_options(tls) if tls is not None else {}),
        )
        uvicorn.Server(config).run(sockets=[sock])


def _bind(host: str, port: int, flag: str) -> socket.socket:
    """A listening socket on host:port, or a one-line exit that says why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = {
            errno.EADDRINUSE: "the port is in use; is another modelplane running? Choose "
            f"another port with {flag}",
            errno.EACCES: f"permission denied (ports below 1024 need privileges); choose "
            f"another port with {flag}",
            errno.EADDRNOTAVAIL: "this machine has no such address; use --host 127.0.0.1, "
            "0.0.0.0 or one of its addresses",
        }.get(exc.errno or 0, f"{exc.strerror or exc}; check --host and {flag}")
        raise SystemExit(f"error: cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock
