"""The one settings object (prefix ``MODELPLANE_``), built at the edge and passed down.

Every setting is documented in ``docs/operations.md``. Nothing else in the package reads the
environment.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_HOME = Path.home() / ".modelplane"
GIB = 1024**3
MIB = 1024**2


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535)
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain): serve HTTPS and gRPC over TLS"
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert (unencrypted)")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA: clients must present a certificate it signed (mTLS)"
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names (NAME or NAME:PORT, comma-separated) the HTTP port answers to "
        "besides HOST:PORT, localhost:PORT and 127.0.0.1:PORT; '*' turns the check off",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins (https://app.example.com, comma-separated) whose pages may call "
        "the HTTP API with a bearer key (CORS); none by default",
    )

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        for host in value:
            if "/" in host or " " in host:
                raise ValueError(
                    f"{host!r} is not a host name; give names as clients type them in URLs, "
                    "e.g. models.example.com,models.example.com:8443"
                )
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            scheme, sep, rest = origin.partition("://")
            bad_origin = not sep or scheme not in ("http", "https") or "/" in rest.rstrip("/")
            if origin != "*" and (bad_origin or not rest):
                raise ValueError(
                    f"{origin!r} is not an origin; give scheme://host[:port] with no path, "
                    "e.g. https://app.example.com"
                )
        return value


class RegistrySettings(BaseModel):
    max_upload_bytes: int = Field(2 * GIB, gt=0, description="Largest model file accepted by push")


class ServingSettings(BaseModel):
    max_request_bytes: int = Field(64 * MIB, gt=0, description="Largest inference request body")
    max_tensor_elements: int = Field(
        1 << 28, gt=0, description="Largest element count of one input tensor"
    )
    request_timeout_s: float = Field(60.0, gt=0, description="Default inference timeout")
    replica_start_timeout_s: float = Field(120.0, gt=0)
    intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads per replica; 0=auto")


class ConvertSettings(BaseModel):
    timeout_s: float = Field(600.0, gt=0, description="A conversion running longer is stopped")
    memory_limit_bytes: int = Field(
        8 * GIB, ge=0, description="Address-space limit of the conversion process; 0 = none"
    )
    cpu_limit_s: int = Field(
        3600, ge=0, description="CPU-seconds limit of the conversion process; 0 = none"
    )
    max_unpack_ratio: float = Field(
        100.0, gt=1, description="An uploaded archive may unpack to at most this times its size"
    )


class TelemetrySettings(BaseModel):
    request_log: bool = Field(True, description="A JSON log line per inference request")
    request_metrics: bool = Field(
        True, description="Per-request series (requests, latency, in flight) in /metrics"
    )


class DetectionSettings(BaseModel):
    """Attack detectors: N events within a window trip one; a trip blocks for ``*_block_s``
    seconds (0 = counted in /metrics and audited, never blocked)."""

    auth_failures: int = Field(
        20, ge=1, description="Failed authentications from one address that trip its block"
    )
    auth_window_s: float = Field(60.0, gt=0, description="Window of auth_failures")
    auth_block_s: float = Field(
        300.0, ge=0, description="How long an address is refused after auth_failures; 0 = never"
    )
    scan_names: int = Field(
        20, ge=1, description="Distinct unknown model names one key (or address) may ask for"
    )
    scan_window_s: float = Field(60.0, gt=0, description="Window of scan_names")
    scan_block_s: float = Field(0.0, ge=0, description="How long a scanning key is refused")
    malformed: int = Field(
        50, ge=1, description="Malformed (400/422) or oversized (413) requests from one key"
    )
    malformed_window_s: float = Field(60.0, gt=0, description="Window of malformed")
    malformed_block_s: float = Field(0.0, ge=0, description="How long such a key is refused")
    max_tracked: int = Field(
        100_000, ge=100, description="Addresses or keys each detector tracks at once"
    )
    never_block: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses or CIDRs (comma-separated) whose failed authentications are "
        "counted and audited but never blocked, e.g. a reverse proxy's 127.0.0.1; none by default",
    )

    @field_validator("never_block", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("never_block")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    f"{network!r} is not an address or CIDR; e.g. 127.0.0.1,10.0.0.0/8,::1"
                ) from None
        return value


class SchedulerSettings(BaseModel):
    executor: Literal["local", "ray"] = Field(
        "local", description="Where replicas run: subprocesses here, or Ray actors on a cluster"
    )
    ray_address: str | None = Field(None, description="Ray cluster to join (ray executor)")
    ray_namespace: str = Field("modelplane", description="Ray namespace for replica actors")
    reconcile_interval_s: float = Field(1.0, gt=0, description="Reconcile and health-check period")
    health_timeout_s: float = Field(2.0, gt=0, description="A health probe slower fails")
    health_failure_threshold: int = Field(
        3, ge=1, description="Failed probes in a row before a ready replica is replaced"
    )
    drain_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for a draining replica's requests to finish"
    )
    max_restarts_per_minute: int = Field(5, ge=1)
    node_cpus: float | None = Field(
        None, gt=0, description="CPUs the local node offers to replicas (default: all cores)"
    )
    node_memory_mb: int | None = Field(
        None, gt=0, description="Memory the local node offers (default: 90% of RAM)"
    )
    node_cost_per_hour: float = Field(0.0, ge=0, description="What the local node costs")


class Settings(BaseSettings):
    """All of modelplane's configuration. Environment: ``MODELPLANE_<FIELD>`` and
    ``MODELPLANE_<SECTION>__<FIELD>`` (for example ``MODELPLANE_SERVING__REQUEST_TIMEOUT_S``)."""

    model_config = SettingsConfigDict(
        env_prefix="MODELPLANE_", env_nested_delimiter="__", extra="ignore"
    )

    home: Path = DEFAULT_HOME
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///$MODELPLANE_HOME/modelplane.db"
    )
    storage_url: str | None = Field(
        None,
        description="Artifacts in a bucket: s3://bucket/prefix (endpoint, region and credentials "
        "the usual way: AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID...); default "
        "the folder $MODELPLANE_HOME/blobs",
    )
    server: ServerSettings = ServerSettings()
    registry: RegistrySettings = RegistrySettings()
    serving: ServingSettings = ServingSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    convert: ConvertSettings = ConvertSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    detection: DetectionSettings = DetectionSettings()
    demo: bool = Field(False, description="Train, push and deploy the iris demo on first start")
    master_key_file: Path | None = Field(
        None, description="Master key of blob encryption; default $MODELPLANE_HOME/master.key"
    )
    master_key: SecretStr | None = Field(
        None, description="The master key itself (32 bytes, base64); wins over the file"
    )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'modelplane.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def admin_key_path(self) -> Path:
        return self.home / "admin.key"

    @property
    def master_key_path(self) -> Path:
        return self.master_key_file or self.home / "master.key"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def work_dir(self) -> Path:
        return self.home / "work"


class ClientSettings(BaseSettings):
    """What the CLI and SDK need to find the server."""

    model_config = SettingsConfigDict(env_prefix="MODELPLANE_", extra="ignore")

    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    home: Path = DEFAULT_HOME
    ca_bundle: Path | None = Field(
        None, description="PEM CA file to trust for an https URL (default: the system's)"
    )
    client_cert: Path | None = Field(None, description="PEM client certificate (for mTLS)")
    client_key: Path | None = Field(None, description="PEM key of client_cert")

    def key(self) -> str | None:
        """The key to send: ``MODELPLANE_API_KEY``, else ``$MODELPLANE_HOME/admin.key``."""
        if self.api_key:
            return self.api_key
        path = self.home / "admin.key"
        try:
            return path.read_text().strip() or None
        except OSError:
            return None


class CliSettings(BaseSettings):
    """What only the CLI reads. Read leniently: a typo here must not turn a one-line error
    into a traceback."""

    model_config = SettingsConfigDict(env_prefix="MODELPLANE_", extra="ignore")

    debug: bool = Field(False, description="Show a traceback for unexpected CLI errors")

    @field_validator("debug", mode="before")
    @classmethod
    def _lenient(cls, value: object) -> bool:
        return str(value).strip().lower() in ("1", "true", "yes", "on")
