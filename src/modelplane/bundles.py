"""Model bundles: an artifact that is a folder (a language model's ONNX files, its genai config
and its tokenizer) stored as one uncompressed tar with a fixed member order and blank metadata,
so equal content gives an equal digest. Written by the conversion worker, read by replicas.

Weights do not compress, and a replica unpacks a bundle faster without a compression layer.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

GENAI_CONFIG = "genai_config.json"
_TAR_MAGIC_OFFSET = 257


def is_bundle(head: bytes) -> bool:
    """Whether an artifact's first bytes (at least 512) are a bundle's (a POSIX tar)."""
    return head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar"


def pack(folder: Path, out: Path) -> None:
    """Write ``folder``'s files (not its subfolders) to the bundle ``out``."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            info = tarfile.TarInfo(path.name)
            info.size = path.stat().st_size
            info.mode = 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)


def unpack(data: bytes, dest: Path) -> None:
    """Unpack a bundle's bytes into ``dest``: plain files only, never outside it."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            if not member.isfile() or "/" in member.name or member.name in ("", ".", ".."):
                raise ValueError(f"unexpected bundle member {member.name!r}")
        tar.extractall(dest, filter="data")
