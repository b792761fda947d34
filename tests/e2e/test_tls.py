"""``serve --tls-cert/--tls-key [--tls-client-ca]``: HTTPS and gRPC over TLS on the usual ports,
checked with real clients (Triton's HTTP and gRPC clients, curl, the CLI), and mTLS refusing a
client without the right certificate. Certificates are made here, never checked in."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import trustme
from tritonclient.utils import InferenceServerException

from modelplane.testing import identity_onnx

from .conftest import BIN, Server

pytestmark = pytest.mark.e2e

X = np.array([[1.5, -2.0]], dtype=np.float32)


@dataclass
class Pki:
    ca: Path  # the CA clients trust for the server
    cert: Path
    key: Path
    client_ca: Path  # the CA the server trusts for clients (mTLS)
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    leaf = server_ca.issue_cert("127.0.0.1", "localhost")
    client = client_ca.issue_cert("client@example.com")
    stranger = other_ca.issue_cert("client@example.com")
    files = Pki(*(folder / f"{n}.pem" for n in Pki.__dataclass_fields__))
    server_ca.cert_pem.write_to_path(str(files.ca))
    leaf.cert_chain_pems[0].write_to_path(str(files.cert))
    leaf.private_key_pem.write_to_path(str(files.key))
    client_ca.cert_pem.write_to_path(str(files.client_ca))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    stranger.cert_chain_pems[0].write_to_path(str(files.stranger_cert))
    stranger.private_key_pem.write_to_path(str(files.stranger_key))
    return files


@dataclass
class TlsServer(Server):
    pki: Pki | None = None
    mutual: bool = False

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def context(self, cert: bool = True) -> ssl.SSLContext:
        assert self.pki is not None
        context = ssl.create_default_context(cafile=self.pki.ca)
        if cert and self.mutual:
            context.load_cert_chain(self.pki.client_cert, self.pki.client_key)
        return context

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.home.parent / "serve.log").read_text()[-3000:]
            raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{log}")
        try:
            response = httpx.get(f"{self.url}/v2/health/ready", timeout=1, verify=self.context())
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def tls_env(self) -> dict[str, str]:
        assert self.pki is not None
        env = {"MODELPLANE_CA_BUNDLE": str(self.pki.ca)}
        if self.mutual:
            env["MODELPLANE_CLIENT_CERT"] = str(self.pki.client_cert)
            env["MODELPLANE_CLIENT_KEY"] = str(self.pki.client_key)
        return env


def _start(pki: Pki, home: Path, mutual: bool) -> TlsServer:
    server = TlsServer(home, pki=pki, mutual=mutual)
    args = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    if mutual:
        args += ["--tls-client-ca", str(pki.client_ca)]
    server.start(*args)
    model = home.parent / "m.onnx"
    model.write_bytes(identity_onnx("FP32"))
    for command in (["push", str(model), "--name", "m"], ["deploy", "m"]):
        result = server.cli(*command, env=server.tls_env())
        assert result.returncode == 0, result.stderr
    return server


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    server = _start(pki, tmp_path_factory.mktemp("tls") / "home", mutual=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    server = _start(pki, tmp_path_factory.mktemp("mtls") / "home", mutual=True)
    try:
        yield server
    finally:
        server.stop()


def _triton_http(server: TlsServer, **ssl_options: str) -> np.ndarray:
    assert server.pki is not None
    client = triton_http.InferenceServerClient(
        server.url.removeprefix("https://"),
        ssl=True,
        ssl_options={"ca_certs": str(server.pki.ca), **ssl_options},
    )
    try:
        tensor = triton_http.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        result = client.infer("m", [tensor], headers=server.auth)
        return result.as_numpy("y")  # type: ignore[no-any-return]  # tritonclient is untyped
    finally:
        client.close()


def _triton_grpc(server: TlsServer, **credentials: bytes) -> np.ndarray:
    assert server.pki is not None
    client = triton_grpc.InferenceServerClient(
        f"127.0.0.1:{server.grpc_port}",
        ssl=True,
        root_certificates=str(server.pki.ca),
        **{k: str(v) for k, v in credentials.items()},
    )
    try:
        tensor = triton_grpc.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        result = client.infer(
            "m", [tensor], headers={"authorization": f"Bearer {server.key}"}, client_timeout=30
        )
        return result.as_numpy("y")  # type: ignore[no-any-return]  # tritonclient is untyped
    finally:
        client.close()


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "30", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_triton_clients_infer_over_tls(tls_server: TlsServer) -> None:
    announced = (tls_server.home.parent / "serve.log").read_text()
    assert f"https://127.0.0.1:{tls_server.port}/v2/models" in announced
    assert f"gRPC over TLS: 127.0.0.1:{tls_server.grpc_port}" in announced
    np.testing.assert_array_equal(_triton_http(tls_server), X)
    np.testing.assert_array_equal(_triton_grpc(tls_server), X)


def test_curl_with_the_ca_and_plain_http_refused(tls_server: TlsServer, pki: Pki) -> None:
    auth = f"Authorization: Bearer {tls_server.key}"
    body = '{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1.5,-2.0]}]}'
    result = _curl("--cacert", str(pki.ca), "-H", auth, "-H", "Content-Type: application/json",
                   "-d", body, f"{tls_server.url}/v2/models/m/infer")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '"data":[1.5,-2.0]' in result.stdout
    # without the CA the certificate is not trusted (curl's exit code 60)
    assert _curl(f"{tls_server.url}/v2/health/ready").returncode == 60
    # plain HTTP on the TLS port gets no answer
    plain = _curl(f"http://127.0.0.1:{tls_server.port}/v2/health/ready")
    assert plain.returncode != 0 or "200" not in plain.stdout


def test_cli_trusts_the_ca_bundle(tls_server: TlsServer) -> None:
    result = tls_server.cli("models", "list", env=tls_server.tls_env())
    assert result.returncode == 0, result.stderr
    assert "m" in result.stdout
    result = tls_server.cli("predict", "m", "-i", '{"x": [[1.5, -2.0]]}', env=tls_server.tls_env())
    assert result.returncode == 0, result.stderr
    # without the bundle: one line that says what to set, never a traceback
    refused = tls_server.cli("models", "list")
    assert refused.returncode == 6  # unreachable
    assert "not trusted" in refused.stderr
    assert "MODELPLANE_CA_BUNDLE" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_mtls_refuses_clients_without_the_right_certificate(
    mtls_server: TlsServer, pki: Pki
) -> None:
    # with the certificate the CA signed: HTTP (Triton, curl, CLI) and gRPC work
    np.testing.assert_array_equal(
        _triton_http(mtls_server, certfile=str(pki.client_cert), keyfile=str(pki.client_key)), X
    )
    np.testing.assert_array_equal(
        _triton_grpc(mtls_server, private_key=pki.client_key, certificate_chain=pki.client_cert),  # type: ignore[arg-type]  # paths, as tritonclient takes them
        X,
    )
    ready = f"{mtls_server.url}/v2/health/ready"
    ok = _curl("--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key",
               str(pki.client_key), "-o", "/dev/null", "-w", "%{http_code}", ready)  # fmt: skip
    assert ok.stdout == "200", ok.stderr
    assert mtls_server.cli("models", "list", env=mtls_server.tls_env()).returncode == 0

    # without a certificate, or with one from another CA: the handshake fails
    assert _curl("--cacert", str(pki.ca), ready).returncode != 0
    stranger = ["--cert", str(pki.stranger_cert), "--key", str(pki.stranger_key)]
    assert _curl("--cacert", str(pki.ca), *stranger, ready).returncode != 0
    # TLS 1.3: the server refuses the client's (missing) certificate after the handshake
    with pytest.raises(httpx.TransportError):
        httpx.get(ready, verify=mtls_server.context(cert=False), timeout=10)
    with pytest.raises(Exception, match=r"(?i)ssl|certificate|alert|eof|reset|closed"):
        _triton_http(mtls_server)
    with pytest.raises(InferenceServerException) as grpc_error:
        _triton_grpc(mtls_server)
    assert grpc_error.value.status() == str(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(InferenceServerException) as stranger_error:
        _triton_grpc(
            mtls_server,
            private_key=pki.stranger_key,  # type: ignore[arg-type]
            certificate_chain=pki.stranger_cert,  # type: ignore[arg-type]
        )
    assert stranger_error.value.status() == str(grpc.StatusCode.UNAVAILABLE)
    # the CLI without its certificate: one line, no traceback
    no_cert = {"MODELPLANE_CA_BUNDLE": str(pki.ca)}
    refused = mtls_server.cli("models", "list", env=no_cert)
    assert refused.returncode != 0
    assert "MODELPLANE_CLIENT_CERT" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "{cert}", "--tls-key", "{missing}"], "cannot read --tls-key"),
        (["--tls-cert", "{cert}", "--tls-key", "{client_key}"], "does not match the certificate"),
        (["--tls-cert", "{ca}", "--tls-key", "{key}"], "does not match the certificate"),
        (["--tls-cert", "{key}", "--tls-key", "{key}"], "cannot load the certificate"),
    ],
)
def test_bad_tls_files_end_serve_with_one_line(
    pki: Pki, tmp_path: Path, flags: list[str], message: str
) -> None:
    names = {**{k: str(getattr(pki, k)) for k in Pki.__dataclass_fields__},
             "missing": str(tmp_path / "missing.pem")}  # fmt: skip
    env = {"MODELPLANE_HOME": str(tmp_path / "home"), "PATH": str(BIN)}
    result = subprocess.run(
        [str(BIN / "modelplane"), "serve", "--port", "0", "--grpc-port", "0",
         *(f.format(**names) for f in flags)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
