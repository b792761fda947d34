"""The typed Python SDK over the management and inference APIs. The CLI is built on it."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from modelplane import backups, errors
from modelplane.client_types import (
    AuditEntry,
    DeploymentInfo,
    KeyInfo,
    ModelDetail,
    ModelSummary,
    ReplicaInfo,
    Signature,
    Tensor,
    Version,
)
from modelplane.client_wire import (
    decode_output,
    encode_input,
    pack_directory,
    parity_summary,
    raise_for,
    tls_context,
    unreachable,
)
from modelplane.settings import ClientSettings

__all__ = [
    "AuditEntry",
    "Client",
    "DeploymentInfo",
    "KeyInfo",
    "ModelDetail",
    "ModelSummary",
    "ReplicaInfo",
    "Signature",
    "Tensor",
    "Version",
    "pack_directory",
]

CHUNK = 1 << 20
# how long replicas stay pending with none starting or draining before a deploy stops waiting
# (longer than one reconcile, between an old replica's drain and the new one's start)
STUCK_S = 3.0


class Client:
    """Talks to a modelplane server. Defaults come from ``MODELPLANE_URL`` and
    ``MODELPLANE_API_KEY`` (else ``$MODELPLANE_HOME/admin.key``); for an ``https://`` URL,
    ``MODELPLANE_CA_BUNDLE`` (the CA to trust, default the system's) and, where the server asks
    for client certificates, ``MODELPLANE_CLIENT_CERT`` and ``MODELPLANE_CLIENT_KEY``."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        ca_bundle: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
    ) -> None:
        settings = ClientSettings()
        self.url = (url or settings.url).rstrip("/")
        key = api_key or settings.key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        verify = tls_context(
            Path(ca_bundle) if ca_bundle is not None else settings.ca_bundle,
            Path(client_cert) if client_cert is not None else settings.client_cert,
            Path(client_key) if client_key is not None else settings.client_key,
        )
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, verify=verify
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise errors.Unavailable(unreachable(self.url, exc)) from None
        raise_for(response)
        return response

    # ---- health -----------------------------------------------------------------------------
    def live(self) -> bool:
        try:
            return self._http.get("/v2/health/live").status_code == 200
        except httpx.TransportError:
            return False

    # ---- models -----------------------------------------------------------------------------
    def push(
        self,
        path: str | Path,
        name: str,
        *,
        format: str = "auto",
        description: str = "",
        tags: Mapping[str, str] | None = None,
        parent: str | None = None,
        progress: Callable[[int], None] | None = None,
        trust_pickle: bool = False,
        samples: str | Path | None = None,
        tolerance: float | None = None,
        force: bool = False,
        input_shape: Sequence[int] | None = None,
        on_stage: Callable[[str], None] | None = None,
        timeout: float = 900.0,
        allow_duplicate: bool = False,
        precision: str | None = None,
        preprocess: str | None = None,
        labels: Sequence[str] | None = None,
        top_k: int = 5,
    ) -> Version:
        """Upload a model file (or directory, packed as .tar.gz), streamed in chunks;
        ``progress`` gets the bytes sent so far. A non-ONNX model is converted and verified on
        the server; this waits for that (``on_stage`` hears convert / verify / store) and
        returns the new version. Content already pushed under ``name`` is refused
        (:class:`Conflict`, naming that version) unless ``allow_duplicate``. ``precision``
        (fp32, int8, int4) sets a language model's weights. ``preprocess`` (``image:...`` or
        ``audio:...``) with ``labels`` makes the version take image or audio files and answer
        its ``top_k`` labels with scores."""
        file = Path(path)
        if file.is_dir():
            with tempfile.TemporaryDirectory() as scratch:
                return self.push(
                    pack_directory(file, Path(scratch)), name, format=format,
                    description=description, tags=tags, parent=parent, progress=progress,
                    trust_pickle=trust_pickle, samples=samples, tolerance=tolerance,
                    force=force, input_shape=input_shape, on_stage=on_stage, timeout=timeout,
                    allow_duplicate=allow_duplicate, precision=precision,
                    preprocess=preprocess, labels=labels, top_k=top_k,
                )  # fmt: skip
        if not file.is_file():
            raise errors.InvalidInput(f"{file} is not a file or directory")

        def chunks() -> Iterator[bytes]:
            sent = 0
            with file.open("rb") as f:
                while chunk := f.read(CHUNK):
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent)
                    yield chunk

        params: dict[str, Any] = {"format": format, "description": description}
        if trust_pickle:
            params["trust_pickle"] = "true"
        if samples is not None:
            params["samples"] = self.upload_samples(samples)
        if tolerance is not None:
            params["tolerance"] = tolerance
        if force:
            params["force"] = "true"
        if input_shape:
            params["input_shape"] = ",".join(str(d) for d in input_shape)
        if tags:
            params["tag"] = [f"{k}={v}" for k, v in tags.items()]
        if parent:
            params["parent"] = parent
        if allow_duplicate:
            params["allow_duplicate"] = "true"
        if precision:
            params["precision"] = precision
        if preprocess:
            params["preprocess"] = preprocess
            params["top_k"] = top_k
        if labels:
            params["label"] = list(labels)
        response = self._request(
            "POST",
            f"/api/v1/models/{name}/versions",
            params=params,
            content=chunks(),
            headers={"Content-Type": "application/octet-stream"},
        )
        if response.status_code == 202:
            return self._await_conversion(response.json()["id"], on_stage, timeout)
        result: Version = response.json()
        return result

    def optimize(
        self,
        name: str,
        version: int,
        *,
        level: str | None = None,
        quantize: str | None = None,
        auto: bool = False,
        max_accuracy_drop: float = 0.005,
        samples: str | Path | None = None,
        on_stage: Callable[[str], None] | None = None,
        timeout: float = 900.0,
    ) -> Version:
        """A new version of ``name`` made from ``version`` by graph optimization (``level``)
        and/or quantization (``quantize``: int8 or fp16), or (``auto``) by the fastest of every
        way, structured pruning among them, whose predictions differ from the source's on at
        most ``max_accuracy_drop`` of the sample rows (``samples``: a .npz or JSON file; by
        default those pushed with the version). Its report has the measured latency before and
        after and the accuracy change (with ``auto``, of every candidate)."""
        body = {"level": level, "quantize": quantize, "auto": auto,
                "max_accuracy_drop": max_accuracy_drop,
                "samples": None if samples is None else self.upload_samples(samples)}  # fmt: skip
        job = self._request(
            "POST", f"/api/v1/models/{name}/versions/{version}/optimize", json=body
        ).json()
        return self._await_conversion(job["id"], on_stage, timeout)

    def upload_samples(self, path: str | Path) -> str:
        """Store sample inputs (.npz or JSON) for a push's parity check; returns their digest."""
        data = Path(path).read_bytes()
        response = self._request("POST", "/api/v1/samples", content=data)
        digest: str = response.json()["digest"]
        return digest

    def conversion(self, conversion_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/api/v1/conversions/{conversion_id}").json()
        return result

    def _await_conversion(
        self, conversion_id: str, on_stage: Callable[[str], None] | None, timeout: float
    ) -> Version:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            job = self.conversion(conversion_id)
            if job["stage"] != seen and on_stage is not None:
                on_stage(job["stage"])
            seen = job["stage"]
            if job["state"] == "succeeded":
                return self.version(job["model"], job["version"])
            if job["state"] == "failed":
                raise errors.UnsupportedModel(
                    f"conversion {conversion_id} failed: {job['error']}"
                    + parity_summary(job.get("report"))
                )
            time.sleep(0.3)
        raise errors.DeadlineExceeded(
            f"conversion {conversion_id} still running after {timeout:g}s; follow it with "
            f"`modelplane conversions show {conversion_id}`"
        )

    def models(self) -> list[ModelSummary]:
        result: list[ModelSummary] = self._request("GET", "/api/v1/models").json()
        return result

    def model(self, name: str) -> ModelDetail:
        result: ModelDetail = self._request("GET", f"/api/v1/models/{name}").json()
        return result

    def version(self, name: str, ref: str | int = "latest") -> Version:
        result: Version = self._request("GET", f"/api/v1/models/{name}/versions/{ref}").json()
        return result

    def set_alias(self, name: str, version: int, alias: str) -> Version:
        result: Version = self._request(
            "PUT", f"/api/v1/models/{name}/aliases/{alias}", json={"version": version}
        ).json()
        return result

    def delete_version(self, name: str, version: int) -> None:
        self._request("DELETE", f"/api/v1/models/{name}/versions/{version}")

    def delete_model(self, name: str) -> None:
        self._request("DELETE", f"/api/v1/models/{name}")

    # ---- deployments ------------------------------------------------------------------------
    def deploy(
        self,
        model: str,
        *,
        replicas: int | None = None,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        resources: Mapping[str, Any] | None = None,
        placement: Mapping[str, Any] | None = None,
        autoscaling: Mapping[str, Any] | None = None,
        autoscaling_off: bool = False,
        reset: bool = False,
        canary: float | None = None,
        shadow: bool = False,
        rollout: Mapping[str, Any] | None = None,
        rollout_off: bool = False,
        wait: bool = True,
        timeout: float = 120.0,
    ) -> DeploymentInfo:
        """Create or update a deployment and (``wait``) return once every replica of it is
        ready, like :meth:`push` returns once the version is stored. ``config`` holds serving
        settings (max_batch_size, max_queue_delay_ms, preferred_batch_sizes,
        max_queued_requests); ``resources`` what each replica reserves (cpu, memory_mb, gpus);
        ``placement`` where replicas may go (node_labels, gpu_type, spread_zones, weights);
        ``autoscaling`` the replica bounds (min_replicas, max_replicas,
        target_ongoing_requests, delays). What is omitted, down to single fields, keeps its
        value (``reset``: goes back to the defaults). ``canary`` (a percentage) or ``shadow``
        serve the version beside the current one; ``rollout`` (steps, interval_s,
        max_error_rate, ...) makes later versions take over step by step. Raises
        :class:`Unavailable` when replicas cannot be placed (with the reason) or are not ready
        within ``timeout`` seconds."""
        body = {"model": model, "replicas": replicas, "name": name, "config": config,
                "resources": resources, "placement": placement, "autoscaling": autoscaling,
                "autoscaling_off": autoscaling_off, "reset": reset, "canary": canary,
                "shadow": shadow, "rollout": rollout, "rollout_off": rollout_off}  # fmt: skip
        result: DeploymentInfo = self._request("POST", "/api/v1/deployments", json=body).json()
        if not wait or result["desired_replicas"] == 0:
            return result
        return self.wait_ready(result["name"], timeout)

    def wait_ready(self, name: str, timeout: float = 120.0) -> DeploymentInfo:
        """Wait until deployment ``name`` serves its latest revision on every replica. Gives up
        early, with the placement reason, once replicas stay pending with nothing starting or
        making room (no wait would change that)."""
        deadline = time.monotonic() + timeout
        stuck_since: float | None = None
        while True:
            info = self.deployment(name)
            if info["state"] == "ready" and all(t["ready_replicas"] for t in info["traffic"]):
                return info
            # pending with nothing starting or making room, once the controller has acted on
            # the latest deploy: no wait will change it
            moving = any(r["state"] in ("starting", "draining") for r in info["replicas"])
            if info["pending"] and info["reconciled"] and not moving:
                stuck_since = stuck_since or time.monotonic()
            else:
                stuck_since = None
            if stuck_since is not None and time.monotonic() - stuck_since >= STUCK_S:
                reasons = "; ".join(sorted(set(info["pending"])))
                serving = (
                    f"{info['ready_replicas']}/{info['desired_replicas']} ready, "
                    if info["ready_replicas"]
                    else ""
                )
                raise errors.Unavailable(
                    f"{name}: {serving}{len(info['pending'])} replica(s) pending: {reasons}"
                )
            if time.monotonic() > deadline:
                why = f" (last failure: {info['last_failure']})" if info["last_failure"] else ""
                raise errors.Unavailable(
                    f"{name} not ready after {timeout:g}s: {info['ready_replicas']}"
                    f"/{info['desired_replicas']} replicas ready{why}"
                )
            time.sleep(0.5)

    def cluster(self) -> dict[str, Any]:
        """The servers sharing the database, which one leads and since when, what they share."""
        result: dict[str, Any] = self._request("GET", "/api/v1/cluster").json()
        return result

    def nodes(self) -> list[dict[str, Any]]:
        """The nodes replicas run on: capacity, allocated, replicas, cost, state."""
        result: list[dict[str, Any]] = self._request("GET", "/api/v1/nodes").json()
        return result

    def cordon(self, node: str, *, reason: str = "", drain: bool = False) -> dict[str, Any]:
        """Take a node out of placement; ``drain`` also moves its replicas elsewhere."""
        body = {"reason": reason, "drain": drain}
        result: dict[str, Any] = self._request(
            "POST", f"/api/v1/nodes/{node}/cordon", json=body
        ).json()
        return result

    def uncordon(self, node: str) -> None:
        self._request("DELETE", f"/api/v1/nodes/{node}/cordon")

    def rotate_master_key(self) -> dict[str, Any]:
        """Re-wrap the blob store's data keys under a new master key (admin keys only)."""
        result: dict[str, Any] = self._request("POST", "/api/v1/admin/rotate-master-key").json()
        return result

    def backup(self, target: Path, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Write a backup of the server (embedded default only; admin keys) to ``target``: it
        appears only once whole and checked. Returns its manifest; ``progress`` hears the bytes
        received so far."""
        if target.exists():
            raise errors.InvalidInput(f"{target} exists; choose a new file name")
        partial = target.with_name(f".{target.name}.partial")
        received = 0
        try:
            with self._http.stream("GET", "/api/v1/admin/backup", timeout=None) as response:
                if not response.is_success:
                    response.read()
                    raise_for(response)
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        received += len(chunk)
                        if progress is not None:
                            progress(received)
                    out.flush()
                    os.fsync(out.fileno())
            manifest = backups.read_manifest(partial)
            partial.rename(target)
        except httpx.TransportError as exc:
            raise errors.Unavailable(f"the backup stream ended: {type(exc).__name__}") from None
        finally:
            partial.unlink(missing_ok=True)
        return manifest

    def audit(
        self,
        *,
        since: str | None = None,
        key: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """The audit trail, newest last (admin keys only): ``since`` 10m or an ISO time,
        ``key`` a key id, ``action`` e.g. ``deploy`` or ``denied``."""
        params = {k: v for k, v in {"since": since, "key": key, "action": action,
                                    "limit": limit}.items() if v is not None}  # fmt: skip
        result: list[AuditEntry] = self._request("GET", "/api/v1/audit", params=params).json()
        return result

    def follow_audit(
        self, *, since: str | None = None, key: str | None = None, action: str | None = None
    ) -> Iterator[AuditEntry]:
        """Audit entries as they are recorded (stops when the caller stops iterating)."""
        params = {k: v for k, v in {"since": since, "key": key, "action": action,
                                    "follow": "true"}.items() if v is not None}  # fmt: skip
        yield from self._follow("/api/v1/audit", params, "audit")

    def deployments(self) -> list[DeploymentInfo]:
        result: list[DeploymentInfo] = self._request("GET", "/api/v1/deployments").json()
        return result

    def deployment(self, name: str) -> DeploymentInfo:
        result: DeploymentInfo = self._request("GET", f"/api/v1/deployments/{name}").json()
        return result

    def logs(
        self,
        name: str,
        *,
        replica: str | None = None,
        since: str | None = None,
        level: str | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """A deployment's collected log records (newest last)."""
        params = {k: v for k, v in {"replica": replica, "since": since, "level": level,
                                    "limit": limit}.items() if v is not None}  # fmt: skip
        result: list[dict[str, Any]] = self._request(
            "GET", f"/api/v1/deployments/{name}/logs", params=params
        ).json()
        return result

    def follow_logs(
        self,
        name: str,
        *,
        replica: str | None = None,
        since: str | None = None,
        level: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Log records as they are written (stops when the caller stops iterating)."""
        params = {k: v for k, v in {"replica": replica, "since": since, "level": level,
                                    "follow": "true"}.items() if v is not None}  # fmt: skip
        yield from self._follow(f"/api/v1/deployments/{name}/logs", params, "log")

    def _follow(self, path: str, params: Mapping[str, Any], what: str) -> Iterator[Any]:
        """The JSON lines of a streamed GET (``follow=true``) as they arrive."""
        try:
            with self._http.stream("GET", path, params=params, timeout=None) as response:
                if not response.is_success:
                    response.read()
                    raise_for(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield orjson.loads(line)
        except httpx.TransportError as exc:
            raise errors.Unavailable(f"{what} stream ended: {type(exc).__name__}") from None

    def undeploy(self, name: str) -> None:
        self._request("DELETE", f"/api/v1/deployments/{name}")

    def promote(self, name: str) -> DeploymentInfo:
        """The canary's (or shadow's) version serves every request from now on."""
        result: DeploymentInfo = self._request("POST", f"/api/v1/deployments/{name}/promote").json()
        return result

    def rollback(self, name: str) -> DeploymentInfo:
        """Back to the current version (the candidate stops), or to the one before."""
        result: DeploymentInfo = self._request(
            "POST", f"/api/v1/deployments/{name}/rollback"
        ).json()
        return result

    # ---- keys (admin) -----------------------------------------------------------------------
    def keys(self) -> list[KeyInfo]:
        """Every key (never a secret)."""
        result: list[KeyInfo] = self._request("GET", "/api/v1/keys").json()
        return result

    def create_key(
        self,
        name: str,
        role: str,
        *,
        models: Sequence[str] | None = None,
        expires: str | None = None,
        rate_limit: float | None = None,
        burst: int | None = None,
        max_concurrent: int | None = None,
        daily: int | None = None,
        daily_tokens: int | None = None,
    ) -> KeyInfo:
        """A new key; ``secret`` in the result is shown this once. ``models``: names or globs
        (default every model); ``expires``: ``30d``, ``12h`` or an ISO time; the limits:
        requests per second (with ``burst``), in flight at once, per UTC day, and language-model
        tokens per UTC day."""
        body = {"name": name, "role": role, "models": list(models) if models else None,
                "expires": expires, "rate_limit": rate_limit, "burst": burst,
                "max_concurrent": max_concurrent, "daily": daily,
                "daily_tokens": daily_tokens}  # fmt: skip
        result: KeyInfo = self._request("POST", "/api/v1/keys", json=body).json()
        return result

    def update_key(
        self,
        key_id: str,
        *,
        name: str | None = None,
        role: str | None = None,
        models: Sequence[str] | None = None,
        expires: str | None = None,
        rate_limit: float | None = None,
        burst: int | None = None,
        max_concurrent: int | None = None,
        daily: int | None = None,
        daily_tokens: int | None = None,
    ) -> KeyInfo:
        """Change a key (None keeps a field); ``expires="never"`` removes its expiry, a limit
        of 0 removes that limit."""
        body = {k: v for k, v in {"name": name, "role": role, "expires": expires,
                                  "models": list(models) if models else None,
                                  "rate_limit": rate_limit, "burst": burst,
                                  "max_concurrent": max_concurrent, "daily": daily,
                                  "daily_tokens": daily_tokens}.items()
                if v is not None}  # fmt: skip
        result: KeyInfo = self._request("PATCH", f"/api/v1/keys/{key_id}", json=body).json()
        return result

    def rotate_key(self, key_id: str, grace: str = "0s") -> KeyInfo:
        """A new secret (in ``secret``); the old one keeps working for ``grace`` (e.g. 1h)."""
        result: KeyInfo = self._request(
            "POST", f"/api/v1/keys/{key_id}/rotate", json={"grace": grace}
        ).json()
        return result

    def revoke_key(self, key_id: str) -> KeyInfo:
        result: KeyInfo = self._request("DELETE", f"/api/v1/keys/{key_id}").json()
        return result

    # ---- inference --------------------------------------------------------------------------
    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """V2 model metadata of a deployed model (name, versions, inputs, outputs)."""
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "")
        result: dict[str, Any] = self._request("GET", path).json()
        return result

    def infer_v2(
        self, name: str, request: Mapping[str, Any], version: str | None = None
    ) -> dict[str, Any]:
        """Send a V2 JSON inference request as is; returns the V2 JSON response."""
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
        result: dict[str, Any] = self._request("POST", path, json=request).json()
        return result

    def infer(
        self, name: str, inputs: Mapping[str, Any], version: str | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model on named arrays (anything numpy accepts, cast to the model's input
        datatypes); returns named arrays."""
        types = {t["name"]: t["datatype"] for t in self.metadata(name, version)["inputs"]}
        request = {"inputs": [encode_input(k, v, types.get(k)) for k, v in inputs.items()]}
        response = self.infer_v2(name, request, version)
        return {out["name"]: decode_output(out) for out in response["outputs"]}
