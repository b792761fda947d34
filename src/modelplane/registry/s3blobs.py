"""The blob store in an S3-compatible bucket (``MODELPLANE_STORAGE_URL=s3://bucket/prefix``),
for state that outlives one machine. Same contract as the local folder: blobs named by the
sha256 of their plaintext, sealed under their own data key, the wrapped key stored before its
blob and deleted after it.

Layout under the prefix: ``sha256/<ab>/<digest>`` (the sealed blob) and ``keys/<digest>.key``
(its data key wrapped by the master key). An upload is staged once on local disk (hashed while
it is written: its format must be read before it is kept), then sealed chunk by chunk straight
into a multipart upload: never whole in memory, never a second local copy. A replica started on
this machine reads a local, content-addressed cache of the sealed blob (``<home>/blobs/cache``),
filled on first use and verified against the digest before it becomes visible.

The endpoint, region and credentials come the usual way of boto3: ``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from modelplane.artifacts import (
    CHUNK,
    ArtifactBroken,
    Sealer,
    new_data_key,
    open_sealed,
    opens_as,
)
from modelplane.errors import ModelplaneError, Unavailable
from modelplane.registry.blobs import (
    DIGEST_RE,
    LocalStagedBlob,
    blob_failed,
    export_verified,
    fsync_dir,
    read_verified,
)
from modelplane.security.blobkeys import BlobKeys

PART = 8 << 20  # multipart part size (S3's minimum is 5 MiB, but for the last part)
STALE_S = 24 * 3600  # uploads and keys older than this with no blob are leftovers of a crash


class StorageUrlError(ValueError):
    """``MODELPLANE_STORAGE_URL`` that cannot be used; the message says how to write it."""


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, "prefix/")."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageUrlError(
            f"MODELPLANE_STORAGE_URL must look like s3://bucket/prefix, got {url!r}"
        )
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


@contextlib.contextmanager
def _reaching(bucket: str) -> Iterator[None]:
    """The store's failures as one clear error (a 503 to a client) instead of a traceback."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise Unavailable(
            f"the artifact store refused the request ({error.get('Code', '?')}: "
            f"{error.get('Message', '')}); check the bucket {bucket!r} and the credentials"
        ) from None
    except BotoCoreError as exc:
        raise Unavailable(
            f"the artifact store (bucket {bucket!r}) cannot be reached ({exc}); nothing was "
            "kept: try again in a moment"
        ) from None


class _Parts:
    """A file-like sink that sends what is written as the parts of one multipart upload."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) >= PART:
            self._send(bytes(self._buffer[:PART]))
            del self._buffer[:PART]
        return len(data)

    def _send(self, data: bytes) -> None:
        number = len(self._parts) + 1
        # the store checks each part against its SHA-256 on the way in
        answer = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._id, PartNumber=number, Body=data,
            ChecksumAlgorithm="SHA256",
        )  # fmt: skip
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"],
                            "ChecksumSHA256": answer["ChecksumSHA256"]})  # fmt: skip

    def complete(self) -> None:
        if self._buffer or not self._parts:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        self._client.complete_multipart_upload(
            Bucket=self._bucket, Key=self._key, UploadId=self._id,
            MultipartUpload={"Parts": self._parts},
        )  # fmt: skip

    def abort(self) -> None:
        self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._id)


class S3BlobStore:
    """Blobs in ``s3://bucket/prefix``; staging and the replicas' cache in ``local``."""

    def __init__(
        self, url: str, local: Path, keys: BlobKeys | None, client: Any | None = None
    ) -> None:
        self.bucket, self.prefix = parse_url(url)
        if client is None:
            import boto3

            client = boto3.client("s3")
        self._client = client
        self._keys = keys
        self.staging = local / "staging"
        self.cache = local / "cache"
        for folder in (self.staging, self.cache):
            folder.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self._client.close()

    def check(self) -> None:
        """Fail at start, in words, when the bucket cannot be reached."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUrlError(
                f"cannot reach the bucket {self.bucket!r} ({exc}); check MODELPLANE_STORAGE_URL, "
                "AWS_ENDPOINT_URL and the credentials"
            ) from None

    # ---- names ------------------------------------------------------------------------------
    def _blob(self, digest: str) -> str:
        return f"{self.prefix}sha256/{digest[:2]}/{digest}"

    def _key(self, digest: str) -> str:
        return f"{self.prefix}keys/{digest}.key"

    def _exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    # ---- writing ----------------------------------------------------------------------------
    def stage(self, max_bytes: int) -> LocalStagedBlob:
        return LocalStagedBlob(self, max_bytes)

    def place(self, staged: Path, digest: str) -> None:
        """Seal the plaintext file ``staged`` into the bucket as ``digest`` (its data key stored
        first); a blob already there is kept. ``staged`` is removed either way."""
        with _reaching(self.bucket):
            try:
                if self._exists(self._blob(digest)):
                    return
                parts = _Parts(self._client, self.bucket, self._blob(digest))
                try:
                    key = None
                    if self._keys is not None:
                        key = new_data_key()
                        wrapped = self._keys.wrap(digest, key)
                        self._client.put_object(
                            Bucket=self.bucket, Key=self._key(digest), Body=wrapped
                        )
                    with staged.open("rb") as source:
                        sealer = None if key is None else Sealer(key, parts)
                        while chunk := source.read(CHUNK):
                            (parts if sealer is None else sealer).write(chunk)
                        if sealer is not None:
                            sealer.close()
                    parts.complete()
                except BaseException:
                    # an upload never completed is invisible; one the store cannot abort now
                    # goes at the next start's clean-up (after a day)
                    with contextlib.suppress(Exception):
                        parts.abort()
                    raise
            finally:
                staged.unlink(missing_ok=True)

    def delete(self, digest: str) -> None:
        with _reaching(self.bucket):
            self._client.delete_object(Bucket=self.bucket, Key=self._blob(digest))
            self._client.delete_object(Bucket=self.bucket, Key=self._key(digest))  # after its blob
            self._cached(digest).unlink(missing_ok=True)

    # ---- reading ----------------------------------------------------------------------------
    def exists(self, digest: str) -> bool:
        with _reaching(self.bucket):
            return bool(DIGEST_RE.match(digest)) and self._exists(self._blob(digest))

    def data_key(self, digest: str) -> bytes | None:
        with _reaching(self.bucket):
            if self._keys is None:
                return None
            from botocore.exceptions import ClientError

            try:
                doc = self._client.get_object(Bucket=self.bucket, Key=self._key(digest))["Body"]
                return self._keys.unwrap(digest, doc.read())
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    return None
                raise

    def _plaintext(self, digest: str) -> Iterator[bytes]:
        body = self._client.get_object(Bucket=self.bucket, Key=self._blob(digest))["Body"]
        try:
            key = self.data_key(digest)
            if key is None:
                while chunk := body.read(CHUNK):
                    yield chunk
            else:
                yield from open_sealed(key, body)
        finally:
            body.close()

    def export(self, digest: str, target: Path) -> None:
        with _reaching(self.bucket):
            export_verified(self._plaintext(digest), digest, target)

    def read(self, digest: str, max_bytes: int) -> bytes:
        with _reaching(self.bucket):
            return read_verified(self._plaintext(digest), digest, max_bytes)

    def verify(self, digest: str) -> bool:
        with _reaching(self.bucket):
            return self.exists(digest) and opens_as(self._plaintext(digest), digest)

    def _cached(self, digest: str) -> Path:
        return self.cache / digest[:2] / digest

    def cached_path(self, digest: str) -> Path:
        """Where this machine's copy of the blob is, or would be: nothing is fetched (replicas
        on other machines fetch the blob themselves, see ``locate``)."""
        if not DIGEST_RE.match(digest):
            raise ModelplaneError(f"no blob with digest {digest!r}")
        return self._cached(digest)

    def locate(self, digest: str) -> dict[str, str]:
        """Where a replica on another machine fetches the sealed blob from, with its own
        credentials: bucket, key, and the endpoint and region this server uses (no secret)."""
        return {"bucket": self.bucket, "key": self._blob(digest),
                "endpoint": self._client.meta.endpoint_url,
                "region": self._client.meta.region_name or ""}  # fmt: skip

    def path(self, digest: str) -> Path:
        """A local copy of the sealed blob, for replicas on this machine: fetched on first use,
        checked against the digest (decrypted and hashed) before it is visible."""
        with _reaching(self.bucket):
            if not DIGEST_RE.match(digest):
                raise ModelplaneError(f"no blob with digest {digest!r}")
            final = self._cached(digest)
            if final.exists():
                return final
            final.parent.mkdir(parents=True, exist_ok=True)
            part = self.staging / f"{uuid.uuid4().hex}.part"
            try:
                with part.open("xb") as out:
                    body = self._client.get_object(Bucket=self.bucket, Key=self._blob(digest))[
                        "Body"
                    ]
                    try:
                        while chunk := body.read(CHUNK):
                            out.write(chunk)
                    finally:
                        body.close()
                    out.flush()
                    os.fsync(out.fileno())
                if not self._verify_file(part, digest):
                    raise blob_failed(digest, ArtifactBroken("the copy fetched does not open"))
                os.replace(part, final)
                fsync_dir(final.parent)
            finally:
                part.unlink(missing_ok=True)
            return final

    def _verify_file(self, path: Path, digest: str) -> bool:
        key = self.data_key(digest)
        with path.open("rb") as f:
            chunks = open_sealed(key, f) if key is not None else iter(lambda: f.read(CHUNK), b"")
            return opens_as(chunks, digest)

    # ---- housekeeping -----------------------------------------------------------------------
    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self._client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", ())

    def digests(self) -> Iterator[str]:
        with _reaching(self.bucket):
            for item in self._list(f"{self.prefix}sha256/"):
                name = item["Key"].rsplit("/", 1)[-1]
                if DIGEST_RE.match(name):
                    yield name

    def clean_staging(self) -> int:
        """Remove local leftovers, and what a crashed push left in the bucket long ago (other
        servers may be pushing now: only uploads and keys older than a day go)."""
        with _reaching(self.bucket):
            removed = 0
            for path in self.staging.glob("*.part"):
                path.unlink(missing_ok=True)
                removed += 1
            old = time.time() - STALE_S
            uploads = self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
            for upload in uploads.get("Uploads", ()):
                if upload["Initiated"].timestamp() < old:
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
            blobs = set(self.digests())
            for item in self._list(f"{self.prefix}keys/"):
                digest = item["Key"].rsplit("/", 1)[-1].removesuffix(".key")
                if digest not in blobs and item["LastModified"].timestamp() < old:
                    self._client.delete_object(Bucket=self.bucket, Key=item["Key"])
            return removed

    def seal_plaintext(self) -> int:
        return 0  # blobs are sealed on their way into the bucket
