"""The composition root of ``modelplane serve``: builds every part and wires them together."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from modelplane import __version__
from modelplane.api.app import create_app
from modelplane.api.services import Services
from modelplane.cluster.executor import ReplicaExecutor
from modelplane.cluster.local import LocalExecutor
from modelplane.domain import Role
from modelplane.registry.blobs import LocalBlobStore
from modelplane.registry.conversions import ConversionService
from modelplane.registry.db import make_engine, make_sessions, migrate
from modelplane.registry.deployments import DeploymentStore
from modelplane.registry.keys import KeyStore
from modelplane.registry.nodes import NodeStore
from modelplane.registry.service import RegistryService
from modelplane.scheduler.controller import Controller
from modelplane.serving.gateway import Gateway
from modelplane.serving.grpc import create_grpc_server
from modelplane.serving.routing import RoutingTable
from modelplane.settings import Settings
from modelplane.telemetry.logs import Flusher, LogWriter, json_logging
from modelplane.telemetry.metrics import Metrics

log = logging.getLogger("modelplane")


@dataclass(frozen=True, slots=True)
class Platform:
    services: Services
    gateway: Gateway
    app: ASGIApp
    admin_key_created: bool


def ensure_admin_key(keys: KeyStore, path: Path) -> bool:
    """On first start, create an admin key and write it to ``path`` (mode 0600)."""
    if path.exists() and keys.count() > 0:
        return False
    if keys.count() > 0 and not path.exists():
        return False  # keys exist; the operator removed the file on purpose
    _, secret = keys.create(Role.ADMIN, "admin")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)
    return True


def make_executor(settings: Settings) -> ReplicaExecutor:
    if settings.scheduler.executor == "ray":
        from modelplane.cluster.ray import RayExecutor

        return RayExecutor(settings)
    return LocalExecutor(settings)


DEMO_READY_TIMEOUT_S = 120.0


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
    blobs = LocalBlobStore(settings.blob_dir)
    registry = RegistryService(sessions, blobs, settings.registry.max_upload_bytes)
    removed = registry.collect_garbage()
    if removed:
        log.info("removed %d leftover file(s) from an interrupted write", removed)
    deployments = DeploymentStore(sessions, registry)
    keys = KeyStore(sessions)
    nodes = NodeStore(sessions)
    created = ensure_admin_key(keys, settings.admin_key_path)
    executor = make_executor(settings)
    table = RoutingTable()
    metrics = Metrics(CollectorRegistry(), settings.telemetry.request_metrics)
    controller = Controller(
        deployments,
        executor,
        table,
        blobs.path,
        interval_s=settings.scheduler.reconcile_interval_s,
        max_starts_per_minute=settings.scheduler.max_restarts_per_minute,
        drain_timeout_s=settings.scheduler.drain_timeout_s,
        nodes=nodes,
        on_step=metrics.reconcile.observe,
    )
    gateway = Gateway(table, executor.token, settings.serving.request_timeout_s, metrics)
    controller.load = gateway
    gateway.on_demand = controller.kick
    conversions = ConversionService(sessions, registry, blobs, settings, metrics)
    interrupted = conversions.fail_interrupted()
    if interrupted:
        log.info("%d conversion(s) were interrupted by the last stop; push them again", interrupted)
    services = Services(
        settings, registry, deployments, keys, controller, conversions, gateway, metrics, nodes
    )

    grpc_address = f"{settings.server.host}:{settings.server.grpc_port}"

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # grpc.aio binds to the running loop, so the server is made here, not in build()
        grpc_server = create_grpc_server(
            gateway, keys, __version__, settings.serving.max_request_bytes
        )
        try:
            grpc_server.add_insecure_port(grpc_address)
        except RuntimeError:
            raise RuntimeError(
                f"cannot listen for gRPC on {grpc_address}; is the port in use? "
                "Choose another with --grpc-port"
            ) from None
        await grpc_server.start()
        controller.start()
        if settings.demo:
            from modelplane.demo import ensure_demo

            try:
                await asyncio.to_thread(ensure_demo, registry, deployments)
            except Exception:
                log.exception("could not set up the iris demo; the server runs without it")
            controller.kick()
            # "up" means the demo answers: the tour's first command finds it ready
            if not await _wait_until_routed(table, "iris", DEMO_READY_TIMEOUT_S):
                log.warning("the iris demo is not serving yet; see `modelplane deployments "
                            "status iris`")  # fmt: skip
        if announce is not None:
            announce()
        try:
            yield
        finally:
            await grpc_server.stop(grace=2.0)
            await controller.stop()
            await gateway.close()

    app = create_app(services, gateway, lifespan)
    return Platform(services, gateway, app, created)


def banner(settings: Settings, created: bool) -> str:
    url = f"http://{settings.server.host}:{settings.server.port}"
    grpc = f"{settings.server.host}:{settings.server.grpc_port}"
    key = settings.admin_key_path
    first = "created on this first start" if created else "from an earlier start"
    return f"""
modelplane is up.
  Dashboard     {url}/          (sign in with the admin key)
  API docs      {url}/docs
  V2 inference  {url}/v2/models/<name>/infer   (gRPC: {grpc})
  Admin key     {key}   ({first}; keep it secret)

Try it:
  curl -s -H "Authorization: Bearer $(cat {key})" \\
       -H 'Content-Type: application/json' -d @- {url}/v2/models/iris/infer <<'JSON'
{{"inputs":[{{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}}]}}
JSON

  python -c "import modelplane; print(modelplane.Client().infer('iris', \\
      {{'float_input': [[5.1, 3.5, 1.4, 0.2]]}}))"
"""


def serve(settings: Settings) -> None:
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
        sock = _bind(settings.server.host, settings.server.port)

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
        )
        uvicorn.Server(config).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"error: cannot listen on {host}:{port} ({exc.strerror}); is another modelplane "
            "running? Choose another port with --port"
        ) from None
    sock.set_inheritable(True)
    return sock
