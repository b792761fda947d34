"""TLS files of ``serve`` and the replica CA: checks, messages and handshakes in memory."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
import trustme

from modelplane.security.replica_tls import REPLICA_NAME, ReplicaAuthority, replica_server_context
from modelplane.security.tls import (
    TlsFileError,
    grpc_credentials,
    tls_files,
    uvicorn_options,
)


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    other = trustme.CA().issue_cert("localhost")
    files = {
        "cert": tmp_path / "cert.pem",
        "key": tmp_path / "key.pem",
        "ca": tmp_path / "ca.pem",
        "other_key": tmp_path / "other-key.pem",
        "junk": tmp_path / "junk.pem",
    }
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    other.private_key_pem.write_to_path(str(files["other_key"]))
    files["junk"].write_text("not a certificate\n")
    return files


def test_tls_is_off_without_files() -> None:
    assert tls_files(None, None, None) is None


def test_good_files_make_https_and_grpc_settings(pem: dict[str, Path]) -> None:
    files = tls_files(pem["cert"], pem["key"], None)
    assert files is not None
    assert not files.mutual
    assert uvicorn_options(files) == {
        "ssl_certfile": str(pem["cert"]),
        "ssl_keyfile": str(pem["key"]),
    }
    grpc_credentials(files)
    mutual = tls_files(pem["cert"], pem["key"], pem["ca"])
    assert mutual is not None
    assert mutual.mutual
    assert uvicorn_options(mutual)["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    grpc_credentials(mutual)


@pytest.mark.parametrize(
    ("cert", "key", "ca", "message"),
    [
        ("cert", None, None, "--tls-cert and --tls-key go together"),
        (None, "key", None, "--tls-cert and --tls-key go together"),
        (None, None, "ca", "--tls-client-ca needs --tls-cert and --tls-key"),
        ("cert", "missing", None, "cannot read --tls-key .*missing.pem: No such file"),
        ("missing", "key", None, "cannot read --tls-cert"),
        ("cert", "other_key", None, "the key in .*other-key.pem does not match the certificate"),
        ("junk", "key", None, "cannot load the certificate .*junk.pem"),
        ("cert", "key", "junk", "--tls-client-ca .*junk.pem is not a PEM certificate"),
    ],
)
def test_bad_files_say_which_and_why(
    pem: dict[str, Path], cert: str | None, key: str | None, ca: str | None, message: str
) -> None:
    def path(name: str | None) -> Path | None:
        if name is None:
            return None
        return pem.get(name, pem["cert"].with_name(f"{name}.pem"))

    with pytest.raises(TlsFileError, match=message) as info:
        tls_files(path(cert), path(key), path(ca))
    assert "\n" not in str(info.value)


def test_unreadable_file(pem: dict[str, Path]) -> None:
    # a folder where the key should be: unreadable for root too (chmod 0 is not, and CI is root)
    folder = pem["key"].with_name("key-folder.pem")
    folder.mkdir()
    with pytest.raises(TlsFileError, match=r"cannot read --tls-key .*Is a directory"):
        tls_files(pem["cert"], folder, None)


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> None:
    """A full TLS handshake through memory buffers; raises ``ssl.SSLError`` when refused."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=REPLICA_NAME)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, end in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_replica_authority_issues_certificates_its_clients_trust(tmp_path: Path) -> None:
    path = tmp_path / "replica-ca.pem"
    authority = ReplicaAuthority.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cert, key = authority.issue("r1")
    _handshake(authority.client_context(), replica_server_context(cert, key))

    # a restarted server keeps its CA: replicas it adopts stay trusted
    again = ReplicaAuthority.load_or_create(path)
    assert again.cert_pem == authority.cert_pem
    _handshake(again.client_context(), replica_server_context(cert, key))
    _handshake(authority.client_context(), replica_server_context(*again.issue("r2")))

    # another server's CA (or any other certificate) is refused
    stranger = ReplicaAuthority.load_or_create(tmp_path / "other.pem")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(stranger.client_context(), replica_server_context(cert, key))
