"""What a replica receives from its executor through the environment (never argv).

Read with the standard library, not pydantic-settings: these five values are all a replica
needs, and leaving pydantic out keeps every replica process about 12 MB smaller.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

PREFIX = "MODELPLANE_REPLICA_"


class ReplicaEnvError(ValueError):
    """A value the executor passed is malformed."""


@dataclass(frozen=True)
class ReplicaEnv:
    token: str = ""  # the shared secret the gateway sends to this replica
    artifact_key: str = field(default="", repr=False)  # data key of the sealed artifact (hex)
    tls_cert: str = ""  # PEM certificate to listen with over TCP (Ray)
    tls_key: str = field(default="", repr=False)  # PEM key of tls_cert
    parent_pid: int = 0  # the process that started the replica; it exits when that one does

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> ReplicaEnv:
        env = os.environ if environ is None else environ
        raw_pid = env.get(PREFIX + "PARENT_PID", "0").strip() or "0"
        try:
            parent_pid = int(raw_pid)
        except ValueError:
            raise ReplicaEnvError(
                f"{PREFIX}PARENT_PID must be a process id, got {raw_pid!r}"
            ) from None
        if parent_pid < 0:
            raise ReplicaEnvError(f"{PREFIX}PARENT_PID must be >= 0, got {parent_pid}")
        key = env.get(PREFIX + "ARTIFACT_KEY", "")
        try:
            bytes.fromhex(key)
        except ValueError:
            raise ReplicaEnvError(f"{PREFIX}ARTIFACT_KEY must be hex") from None
        return cls(
            token=env.get(PREFIX + "TOKEN", ""),
            artifact_key=key,
            tls_cert=env.get(PREFIX + "TLS_CERT", ""),
            tls_key=env.get(PREFIX + "TLS_KEY", ""),
            parent_pid=parent_pid,
        )
