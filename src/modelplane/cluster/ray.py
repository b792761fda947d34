"""The Ray executor: each replica is a Ray actor pinned to the node placement chose, with its CPU,
memory and GPUs reserved in Ray; the gateway reaches the replica over TCP with TLS (a certificate
from the server's own CA, see ``security/replica_tls.py``) and the replica token.

Nodes are the Ray cluster's nodes. Capacity comes from Ray's resources; ``zone``,
``instance_type``, ``cost_per_hour`` and ``gpu_type`` from the node's labels
(``ray start --labels zone=eu-1,instance_type=m5.xlarge,cost_per_hour=0.192``). A node is lost
when Ray says it is dead or its raylet stops answering ``health_failure_threshold`` probes in a
row (at once when its port refuses connections: the machine is up, the raylet is not). Replica
actors are detached and named ``replica-<id>`` in the configured namespace, so a
restarted ``serve`` adopts the ones it finds (they share the replica token kept in
``$MODELPLANE_HOME/replica.token``) and the controller removes those no deployment wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modelplane.cluster.executor import ReplicaSpec, after_probe
from modelplane.cluster.local import replica_arguments
from modelplane.domain import Node, NodeState, Replica, ReplicaState, Resources
from modelplane.security.replica_tls import ReplicaAuthority, derive
from modelplane.serving.replica_client import probe
from modelplane.settings import Settings
from modelplane.telemetry.logs import LogWriter

log = logging.getLogger("modelplane.ray")

ACTOR_PREFIX = "replica-"
MB = 2**20


@dataclass(slots=True)
class _Actor:
    replica: Replica
    handle: Any
    address: Any = None  # ObjectRef of the actor's address() call while starting
    failures: int = 0
    logs: dict[str, LogWriter] = field(default_factory=dict)  # the control plane's copies
    digest: str = ""  # its artifact, kept in the object store while an actor uses it


def _node_ip(address: str) -> str | None:
    """Drivers on a loopback-only machine must say which loopback address is theirs."""
    host = address.removeprefix("ray://").rsplit(":", 1)[0]
    return host if host.startswith("127.") else None


def _load_token(path: Path) -> str:
    """The replica token survives restarts so a new ``serve`` can talk to adopted replicas."""
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


class RayExecutor:
    def __init__(
        self,
        settings: Settings,
        artifact_keys: Callable[[str], bytes | None] | None = None,
        shared_secret: bytes | None = None,
        artifact_source: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        """``shared_secret`` (the servers sharing a database all derive the same one): the
        replica token and CA come from it, so every server's gateway reaches every replica and
        a new leader adopts its predecessor's; without it both are this server's own, kept in
        its home. ``artifact_source`` (artifacts in a bucket): where a node fetches a blob by
        digest, itself; without it the bytes go through Ray's object store."""
        import ray

        self._ray = ray
        self._settings = settings
        self._artifact_keys = artifact_keys  # a sealed artifact's data key, by digest
        self._artifact_source = artifact_source
        settings.home.mkdir(parents=True, exist_ok=True)
        # replicas listen on the network: TLS with a certificate from a private CA
        if shared_secret is None:
            self._token = _load_token(settings.home / "replica.token")
            self._authority = ReplicaAuthority.load_or_create(settings.home / "replica-ca.pem")
        else:
            self._token = derive(shared_secret, b"replica token").hex()
            self._authority = ReplicaAuthority.derived(derive(shared_secret, b"replica CA"))
        self._tls = self._authority.client_context()
        self._actors: dict[str, _Actor] = {}
        self._artifacts: dict[str, Any] = {}
        self._full_ids: dict[str, str] = {}
        self._raylet_failures: Counter[str] = Counter()
        self._lost: set[str] = set()
        self._actor_class: Any = None  # ray.remote(ReplicaActor), made once
        self._connected = False
        self._adopted = False
        self._lock = asyncio.Lock()

    @property
    def token(self) -> str:
        return self._token

    @property
    def replica_tls(self) -> ssl.SSLContext:
        return self._tls

    def log_path(self, deployment: str, replica_id: str) -> Path:
        return self._settings.log_dir / deployment / f"{replica_id}.log"

    # ---- connection and adoption ------------------------------------------------------------
    async def _ensure(self) -> None:
        if self._adopted:
            return
        async with self._lock:
            if not self._connected:
                await asyncio.to_thread(self._connect)
                self._connected = True
            if not self._adopted:
                await self._adopt()
                self._adopted = True

    def _connect(self) -> None:
        scheduler = self._settings.scheduler
        address = scheduler.ray_address or "auto"
        log.info("joining the Ray cluster at %s (namespace %s)", address, scheduler.ray_namespace)
        self._ray.init(
            address=address,
            namespace=scheduler.ray_namespace,
            _node_ip_address=_node_ip(address),
            logging_level=logging.WARNING,
            log_to_driver=False,
            ignore_reinit_error=True,
        )

    async def _adopt(self) -> None:
        """Take over the replica actors a previous ``serve``, or the previous leader, left
        running."""
        ray = self._ray
        names = await asyncio.to_thread(ray.util.list_named_actors)
        for name in names:
            if not name.startswith(ACTOR_PREFIX):
                continue
            try:
                handle = ray.get_actor(name)
                info = await asyncio.wait_for(handle.describe.remote(), 10.0)
            except Exception as exc:
                log.warning("removing replica actor %s that does not answer: %s", name, exc)
                with contextlib.suppress(Exception):
                    ray.kill(ray.get_actor(name), no_restart=True)
                continue
            if info["url"] and not info["url"].startswith("tls://"):
                log.warning("removing replica actor %s that listens without TLS", name)
                with contextlib.suppress(Exception):
                    ray.kill(handle, no_restart=True)
                continue
            replica = Replica(
                id=info["replica_id"],
                deployment=info["deployment"],
                model=info["model"],
                version=int(info["version"]),
                url=info["url"],
                state=ReplicaState.STARTING,
                started_at=float(info["started_at"]),
                pid=None,  # a pid on another machine means nothing here
                revision=info["revision"],
                node=info["node"],
                resources=Resources.from_dict(info["resources"]),
            )
            self._actors[replica.id] = _Actor(replica, handle, digest=info["digest"])
            log.info("adopted replica %s of %s on %s", replica.id, replica.deployment, replica.node)

    # ---- nodes --------------------------------------------------------------------------------
    async def nodes(self) -> list[Node]:
        await self._ensure()
        raw = await asyncio.to_thread(self._ray.nodes)
        checks = await asyncio.gather(*(self._raylet_probe(n) for n in raw))
        threshold = self._settings.scheduler.health_failure_threshold
        nodes = []
        for entry, probe_result in zip(raw, checks, strict=True):
            full = entry["NodeID"]
            short = full[:12]
            self._full_ids[short] = full
            if probe_result == "up":
                self._raylet_failures[short] = 0
            elif probe_result == "refused":
                # the machine answers but its raylet is gone: no need to wait for more probes
                self._raylet_failures[short] = threshold
            else:
                self._raylet_failures[short] += 1
            lost = not entry["Alive"] or self._raylet_failures[short] >= threshold
            nodes.append(_node(entry, short, NodeState.LOST if lost else NodeState.HEALTHY))
        self._lost = {n.id for n in nodes if n.state == NodeState.LOST}
        return nodes

    async def _raylet_probe(self, entry: dict[str, Any]) -> str:
        """``up``, ``refused`` (nothing listens: the raylet died) or ``timeout``."""
        if not entry["Alive"]:
            return "refused"
        timeout = self._settings.scheduler.health_timeout_s
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(entry["NodeManagerAddress"], entry["NodeManagerPort"]),
                timeout,
            )
        except ConnectionRefusedError:
            return "refused"
        except (OSError, TimeoutError):
            return "timeout"
        writer.close()
        return "up"

    # ---- replicas -----------------------------------------------------------------------------
    async def start(self, spec: ReplicaSpec) -> Replica:
        await self._ensure()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from modelplane.cluster.ray_actor import ReplicaActor

        ray = self._ray
        node = self._full_ids.get(spec.node)
        if node is None:
            raise RuntimeError(f"unknown Ray node {spec.node!r}")
        if self._artifact_source is None:
            artifacts, source = [await self._artifact(spec)], None
        else:  # the node fetches it from the bucket: the server never holds the bytes
            artifacts, source = [], self._artifact_source(spec.digest)
        now = time.time()
        info = {
            "replica_id": spec.replica_id, "deployment": spec.deployment, "model": spec.model,
            "version": spec.version, "revision": spec.revision, "node": spec.node,
            "resources": spec.resources.to_dict(), "started_at": now,
            "artifact": str(spec.artifact), "digest": spec.digest,
        }  # fmt: skip
        arguments = replica_arguments(
            self._settings, spec, self.log_path(spec.deployment, spec.replica_id)
        )
        options: dict[str, Any] = {
            "name": ACTOR_PREFIX + spec.replica_id,
            "lifetime": "detached",
            "num_cpus": spec.resources.cpu,
            "memory": spec.resources.memory_mb * MB,
            "max_restarts": 0,
            "max_concurrency": 4,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False),
        }
        if spec.resources.gpus:
            options["num_gpus"] = spec.resources.gpus
        cache = str(self._settings.work_dir / "artifacts")
        if self._actor_class is None:
            self._actor_class = ray.remote(ReplicaActor)
        actor = self._actor_class.options(**options)
        tls = self._authority.issue(spec.replica_id)
        # the artifact crosses the object store sealed; only its own data key goes to the actor
        key = self._artifact_keys(spec.digest) if self._artifact_keys is not None else None
        handle = actor.remote(
            info, arguments, self._token, artifacts, cache, tls, key.hex() if key else "", source
        )
        timeout = self._settings.serving.replica_start_timeout_s
        replica = Replica(
            id=spec.replica_id, deployment=spec.deployment, model=spec.model,
            version=spec.version, url="", state=ReplicaState.STARTING, started_at=now,
            revision=spec.revision, node=spec.node, resources=spec.resources,
        )  # fmt: skip
        address = handle.address.remote(timeout)
        self._actors[spec.replica_id] = _Actor(replica, handle, address, digest=spec.digest)
        return replica

    async def _artifact(self, spec: ReplicaSpec) -> Any:
        """The artifact's bytes in Ray's object store (put once per digest), for nodes that do
        not share this machine's files."""
        ref = self._artifacts.get(spec.digest)
        if ref is None:
            data = await asyncio.to_thread(spec.artifact.read_bytes)
            ref = self._artifacts[spec.digest] = await asyncio.to_thread(self._ray.put, data)
        return ref

    async def stop(self, replica_id: str) -> None:
        entry = self._actors.pop(replica_id, None)
        if entry is None:
            return
        if all(other.digest != entry.digest for other in self._actors.values()):
            self._artifacts.pop(entry.digest, None)  # Ray frees the bytes once no one holds them
        if entry.replica.node not in self._lost:  # a lost node's actor cannot answer
            with contextlib.suppress(Exception):
                self._keep_logs(entry, await asyncio.wait_for(entry.handle.stop.remote(), 10.0))
        for log in entry.logs.values():
            log.close()
        with contextlib.suppress(Exception):
            self._ray.kill(entry.handle, no_restart=True)

    async def observe(self) -> list[Replica]:
        await self._ensure()
        entries = list(self._actors.values())
        checked = await asyncio.gather(*(self._check(e) for e in entries))
        for entry, replica in zip(entries, checked, strict=True):
            entry.replica = replica
        await asyncio.gather(*(self._collect_log(e) for e in entries))
        return list(checked)

    async def _collect_log(self, entry: _Actor) -> None:
        """Copy the replica's new log lines from its node into ``$MODELPLANE_HOME/logs``, where
        ``deployments logs`` and the dashboard read them (its sampled payloads and raw output
        beside them, as the local executor leaves them)."""
        if not entry.replica.url or entry.replica.node in self._lost:
            return
        try:
            data = await asyncio.wait_for(
                entry.handle.read_logs.remote(), self._settings.scheduler.health_timeout_s
            )
        except Exception:  # an actor that does not answer is judged by its health checks
            return
        self._keep_logs(entry, data)

    def _keep_logs(self, entry: _Actor, data: dict[str, bytes]) -> None:
        replica = entry.replica
        for suffix, lines in data.items():
            log = entry.logs.get(suffix)
            if log is None:
                path = self.log_path(replica.deployment, replica.id).with_suffix(suffix)
                log = entry.logs[suffix] = LogWriter(path)
            log.write_line(lines)
            log.flush()

    async def _check(self, entry: _Actor) -> Replica:
        replica = entry.replica
        if replica.state == ReplicaState.FAILED:
            return replica
        timeout = self._settings.scheduler.health_timeout_s
        if not replica.url:
            if entry.address is None:
                return replace(replica, state=ReplicaState.FAILED, message="no address")
            ready, _ = await asyncio.to_thread(self._ray.wait, [entry.address], timeout=0)
            if not ready:
                return replica
            try:
                url = await entry.address
            except Exception as exc:
                return replace(replica, state=ReplicaState.FAILED, message=_reason(exc))
            replica = replace(replica, url=url)
        try:
            code = await asyncio.wait_for(entry.handle.poll.remote(), timeout)
        except TimeoutError:
            code = None  # a slow actor is judged by the replica's own health probe
        except Exception as exc:
            return replace(replica, state=ReplicaState.FAILED, message=_reason(exc))
        if code is not None:
            try:
                message = await asyncio.wait_for(entry.handle.exit_message.remote(), timeout)
            except Exception as exc:  # the actor went too: say so, do not fail every check
                message = f"exited with code {code} ({_reason(exc)})"
            return replace(replica, state=ReplicaState.FAILED, message=message)
        healthy = await probe(replica.url, self._token, timeout, self._tls)
        checked, entry.failures = after_probe(replica, healthy, entry.failures, self._settings)
        return checked  # one that never became ready is stopped (its actor killed) as failed

    outlives_server = True  # detached actors: the next leader adopts them

    async def release(self) -> None:
        """Forget the actors (detached: they go on serving); adopt them all again on next use."""
        async with self._lock:
            self._actors.clear()
            self._adopted = False

    async def shutdown(self) -> None:
        await asyncio.gather(*(self.stop(rid) for rid in list(self._actors)))
        if self._connected:
            await asyncio.to_thread(self._ray.shutdown)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


def _node(entry: dict[str, Any], short: str, state: NodeState) -> Node:
    resources = entry.get("Resources") or {}
    labels = {
        k: str(v) for k, v in (entry.get("Labels") or {}).items() if not k.startswith("ray.io/")
    }
    gpu_type = labels.get("gpu_type", "")
    if not gpu_type:
        gpu_type = next(
            (k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")), ""
        )
    try:
        cost = float(labels.get("cost_per_hour", 0.0))
    except ValueError:
        cost = 0.0
    return Node(
        id=short,
        capacity=Resources(
            cpu=float(resources.get("CPU", 0.0)),
            memory_mb=int(resources.get("memory", 0.0) // MB),
            gpus=int(resources.get("GPU", 0.0)),
        ),
        labels=labels,
        cost_per_hour=cost,
        state=state,
        gpu_type=gpu_type,
        address=str(entry.get("NodeManagerAddress", "")),
    )
