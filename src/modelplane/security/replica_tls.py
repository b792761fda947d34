"""TLS between the gateway and replicas on other machines (the Ray executor's TCP channel).

Each server keeps a private certificate authority (``$MODELPLANE_HOME/replica-ca.pem``, mode
0600, made on first use, kept so a restarted server trusts the replicas it adopts); servers that
share a database derive one authority from the secret they share, so each trusts every replica
and a new leader adopts its predecessor's. Every replica
gets its own key and certificate, issued in memory and handed to it with its start arguments;
the gateway trusts only that authority, so a replica channel is encrypted and the replica is
authenticated, and the per-server token (sent inside TLS) authenticates the gateway. On one
machine replicas keep the Unix socket and the token.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

# the name replica certificates carry and the gateway checks; an address is not known when the
# certificate is issued (the actor finds its node's address), and every replica is the same
# party: this server's
REPLICA_NAME = "replica.modelplane.internal"
CA_DAYS = 3650
# a derived authority's certificate is the same on every server: fixed dates, fixed serial
DERIVED_FROM = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
DERIVED_UNTIL = datetime.datetime(2125, 1, 1, tzinfo=datetime.UTC)


def derive(secret: bytes, purpose: bytes) -> bytes:
    """A 32-byte secret for ``purpose``, derived from ``secret`` (HMAC-SHA256)."""
    return hmac.new(secret, b"modelplane " + purpose, hashlib.sha256).digest()


REPLICA_DAYS = 365  # an expired replica fails its health checks and is replaced with a new one


class ReplicaAuthority:
    """The server's private CA for replica certificates."""

    def __init__(self, cert_pem: bytes, key: Any) -> None:
        self.cert_pem = cert_pem
        self._key = key

    @classmethod
    def load_or_create(cls, path: Path) -> ReplicaAuthority:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        if path.exists():
            data = path.read_bytes()
            key = serialization.load_pem_private_key(data, password=None)
            cert = x509.load_pem_x509_certificate(data)
            return cls(cert.public_bytes(serialization.Encoding.PEM), key)
        authority = cls._create()
        data = authority.cert_pem + authority._key_pem()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return authority

    @classmethod
    def derived(cls, seed: bytes) -> ReplicaAuthority:
        """The authority every holder of ``seed`` builds alike (its key is derived from it)."""
        from cryptography.hazmat.primitives.asymmetric import ec

        order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's n
        key = ec.derive_private_key(int.from_bytes(seed) % (order - 1) + 1, ec.SECP256R1())
        serial = int.from_bytes(derive(seed, b"replica CA serial")[:16]) >> 1
        return cls._create(key, serial, DERIVED_FROM, DERIVED_UNTIL)

    @classmethod
    def _create(
        cls,
        key: Any = None,
        serial: int | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> ReplicaAuthority:
        """A new authority: a fresh key valid for ``CA_DAYS``, or the one given."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelplane replica CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after or now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert.public_bytes(serialization.Encoding.PEM), key)

    def _key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(
            self._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def issue(self, replica_id: str) -> tuple[str, str]:
        """A new key and certificate for one replica: ``(cert_pem, key_pem)``."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        issuer = x509.load_pem_x509_certificate(self.cert_pem)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"replica {replica_id}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=REPLICA_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(REPLICA_NAME)]), False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()

    def client_context(self) -> ssl.SSLContext:
        """What the gateway (and the executor's probes) connect to replicas with: trusts this
        authority only, checks the replica name, TLS 1.3."""
        context = ssl.create_default_context(cadata=self.cert_pem.decode())
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        return context


def replica_server_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A replica's listening context from the PEM texts it was handed. ``ssl`` loads keys only
    from files: they are written to a private temporary folder and removed at once."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    with tempfile.TemporaryDirectory(prefix="mp-tls-") as folder:  # mode 0700
        path = Path(folder) / "replica.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cert_pem + key_pem)
        try:
            context.load_cert_chain(path)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
    return context
