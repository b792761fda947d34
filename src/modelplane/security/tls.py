"""TLS for the public ports: the certificate files of ``serve --tls-cert/--tls-key
[--tls-client-ca]``, checked before anything starts, and the gRPC credentials made from them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TlsFileError(Exception):
    """A TLS file that cannot be used; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate signed by ``client_ca``."""
        return self.client_ca is not None


def tls_files(cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsFiles | None:
    """The server's TLS files, checked (readable, PEM, the key matches the certificate), or
    None when TLS is off. Raises ``TlsFileError`` with a one-line message."""
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsFileError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise TlsFileError("--tls-cert and --tls-key go together: give both")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is not None:
            _readable(flag, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TlsFileError(
                f"the key in {key} does not match the certificate in {cert}"
            ) from None
        raise TlsFileError(
            f"cannot load the certificate {cert} with the key {key}: both must be PEM, the key "
            "unencrypted"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError:
            raise TlsFileError(f"--tls-client-ca {client_ca} is not a PEM certificate") from None
    return TlsFiles(cert, key, client_ca)


def _readable(flag: str, path: Path) -> None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise TlsFileError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


def uvicorn_options(files: TlsFiles) -> dict[str, Any]:
    """``uvicorn.Config`` arguments that serve HTTPS (and require client certificates under
    mTLS)."""
    options: dict[str, Any] = {"ssl_certfile": str(files.cert), "ssl_keyfile": str(files.key)}
    if files.client_ca is not None:
        options["ssl_ca_certs"] = str(files.client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def grpc_credentials(files: TlsFiles) -> Any:
    """``grpc.ServerCredentials`` for the same certificate (and client CA under mTLS)."""
    import grpc

    root = files.client_ca.read_bytes() if files.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(files.key.read_bytes(), files.cert.read_bytes())],
        root_certificates=root,
        require_client_auth=files.mutual,
    )
