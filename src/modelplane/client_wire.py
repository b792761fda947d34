"""How the SDK talks to the server: HTTP errors as the error tree, the TLS context, the V2
tensor codec for named arrays, and folders packed for a push."""

from __future__ import annotations

import gzip
import ssl
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelplane import errors
from modelplane.protocol.datatypes import V2_TO_NUMPY, v2_datatype


def unreachable(url: str, exc: httpx.TransportError) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"the certificate of {url} is not trusted ({text.rpartition('] ')[2] or text}); set "
            "MODELPLANE_CA_BUNDLE to the CA file that signed it"
        )
    # under TLS 1.3 a server that wants a client certificate refuses it after the handshake:
    # the client sees the connection closed before an answer
    closed = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError)
    if url.startswith("https://") and (closed or "SSL" in text or "TLS" in text):
        return (
            f"the TLS connection to {url} failed ({text}); if the server asks for a client "
            "certificate, set MODELPLANE_CLIENT_CERT and MODELPLANE_CLIENT_KEY"
        )
    return (
        f"cannot reach modelplane at {url} ({type(exc).__name__}); is `modelplane serve` "
        "running, and is MODELPLANE_URL right?"
    )


def raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        message = str(response.json().get("error", response.text))
    except ValueError:
        message = response.text or response.reason_phrase
    raise errors.error_for_status(response.status_code, message)


def encode_input(name: str, value: Any, datatype: str | None = None) -> dict[str, Any]:
    try:
        array = np.asarray(value)
        if datatype is not None and datatype != "BYTES" and datatype in V2_TO_NUMPY:
            array = array.astype(V2_TO_NUMPY[datatype], copy=False)
    except (ValueError, TypeError) as exc:
        expected = f" {datatype}" if datatype else ""
        raise errors.InvalidInput(
            f"input {name!r}: cannot be read as a{expected} tensor ({exc}); give a nested list "
            f'of numbers with one shape, e.g. {{"{name}": [[5.1, 3.5, 1.4, 0.2]]}}'
        ) from None
    if array.dtype.kind in ("U", "S", "O"):
        data = [x.decode() if isinstance(x, bytes) else str(x) for x in array.ravel()]
        return {"name": name, "datatype": "BYTES", "shape": list(array.shape), "data": data}
    try:
        v2 = v2_datatype(array)
    except TypeError:
        raise errors.InvalidInput(
            f"input {name!r}: numpy dtype {array.dtype} is not supported"
        ) from None
    return {
        "name": name,
        "datatype": v2,
        "shape": list(array.shape),
        "data": array.ravel().tolist(),
    }


def decode_output(out: Mapping[str, Any]) -> np.ndarray:
    shape = out["shape"]
    if out["datatype"] == "BYTES":
        return np.array(out["data"], dtype=object).reshape(shape)
    return np.asarray(out["data"], dtype=V2_TO_NUMPY[out["datatype"]]).reshape(shape)


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """A member without its owner or times: the same files pack to the same bytes."""
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def pack_directory(folder: Path, into: Path) -> Path:
    """A model directory (SavedModel, Hugging Face) as one .tar.gz to push; plain files only.
    The same files always pack to the same bytes, so pushing a folder again is recognised (and
    ``apply`` finds the version it made)."""
    archive = into / f"{folder.name or 'model'}.tar.gz"
    with archive.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:  # fmt: skip
        for path in sorted(folder.rglob("*")):
            if path.is_symlink():
                raise errors.InvalidInput(f"{path} is a symlink; push plain files only")
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False,
                        filter=_plain)  # fmt: skip
    return archive


def parity_summary(report: Mapping[str, Any] | None) -> str:
    if not report:
        return ""
    parts = []
    for out in report.get("outputs", []):
        if "max_abs_error" in out:
            parts.append(f"{out['name']}: max abs error {out['max_abs_error']:.3g}")
        elif "label_agreement" in out:
            parts.append(f"{out['name']}: label agreement {out['label_agreement']:.1%}")
    return " (" + "; ".join(parts) + ")" if parts else ""


def tls_context(
    ca_bundle: Path | None, client_cert: Path | None, client_key: Path | None
) -> ssl.SSLContext | bool:
    """What httpx verifies the server with: the system's CAs unless ``ca_bundle`` is given, and
    a client certificate for mTLS."""
    if ca_bundle is None and client_cert is None:
        return True
    try:
        context = ssl.create_default_context(cafile=ca_bundle)
        if client_cert is not None:
            context.load_cert_chain(client_cert, client_key)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(str(p) for p in (ca_bundle, client_cert, client_key) if p is not None)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise errors.InvalidInput(
            f"cannot load the TLS files ({files}): {reason}; MODELPLANE_CA_BUNDLE is a PEM CA "
            "file, MODELPLANE_CLIENT_CERT and MODELPLANE_CLIENT_KEY a PEM certificate and key"
        ) from None
    return context
