"""Blob uploads, manifests and tags of the built-in registry.

Blobs go into the same content-addressed `BlobStore` the image puller uses,
so a pushed layer is stored once and a pushed image converts without copying
anything. Manifests are blobs too; which repository holds which manifest, and
what each tag points at, is in the store.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.errors import EmberError
from ember.images.blobs import BlobStore
from ember.store import Store

REPOSITORY_RE = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# A push sends its blobs before the manifest that names them: a blob uploaded, mounted or
# looked up (HEAD/GET) here is kept this long even if no manifest names it yet.
UNNAMED_BLOB_GRACE_SECONDS = 3600.0
# `Content-Range` of a chunk (distribution spec: `<start>-<end>`, inclusive). The HTTP
# response form `bytes <start>-<end>/<total>` is tolerated, as some clients send it.
CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?(\d{1,19})-(\d{1,19})(?:/(?:\d{1,19}|\*))?$")
IMAGE_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


class DistributionError(EmberError):
    """An error in the OCI distribution spec's vocabulary (`BLOB_UNKNOWN`, ...).

    `headers` go on the answer: a 416 on an upload says where the upload stands.
    """

    def __init__(
        self, status: int, oci_code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, code=oci_code.lower())
        self.status = status
        self.oci_code = oci_code
        self.headers = headers or {}


def parse_content_range(value: str) -> tuple[int, int]:
    """A chunk's `Content-Range` -> (first byte, last byte), or a 400 naming the header."""
    match = CONTENT_RANGE_RE.match(value.strip())
    if match is None:
        raise DistributionError(
            400,
            "BLOB_UPLOAD_INVALID",
            f"Content-Range: {value!r} is not '<start>-<end>' (byte offsets, inclusive)",
        )
    start, end = int(match[1]), int(match[2])
    if end < start:
        raise DistributionError(
            416, "BLOB_UPLOAD_INVALID", f"Content-Range: {value!r} ends before it starts"
        )
    return start, end


@dataclass
class Upload:
    """A blob upload in progress: bytes appended to a file, hashed as they arrive."""

    id: str
    path: Path
    hasher: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    # time.monotonic() of the last byte received: idle uploads expire (`expire_uploads`).
    touched: float = field(default_factory=time.monotonic)
    # Set when the upload ends (finished, cancelled or expired): a request still
    # streaming into it then fails instead of writing to a file nobody owns.
    closed: bool = False


class Registry:
    """The registry's storage. It satisfies `ember.images.manager.LocalRegistry`."""

    def __init__(
        self, store: Store, blobs: BlobStore, data_dir: Path, *, hosts: Collection[str]
    ) -> None:
        """`hosts`: the `host[:port]` names clients reach this server by; an image
        reference to one of them is resolved here, not over HTTP."""
        self.store, self.blobs = store, blobs
        self._hosts = frozenset(hosts)
        self.uploads_dir = data_dir / "registry" / "uploads"
        shutil.rmtree(self.uploads_dir, ignore_errors=True)  # uploads do not survive restarts
        self.uploads_dir.mkdir(parents=True)
        self._uploads: dict[str, Upload] = {}
        self.grace = UNNAMED_BLOB_GRACE_SECONDS
        # digest -> time.monotonic() when a client last uploaded it or was told it exists.
        self._announced: dict[str, float] = {}

    @property
    def hosts(self) -> frozenset[str]:
        return self._hosts

    # ---- names -----------------------------------------------------------------------

    @staticmethod
    def check_repository(name: str) -> str:
        if len(name) > 255 or not REPOSITORY_RE.match(name):
            raise DistributionError(400, "NAME_INVALID", f"invalid repository name {name!r}")
        return name

    @staticmethod
    def check_digest(digest: str) -> str:
        if not DIGEST_RE.match(digest):
            raise DistributionError(400, "DIGEST_INVALID", f"invalid digest {digest!r}")
        return digest

    # ---- blobs -----------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        self.check_digest(digest)
        if not self.blobs.has(digest):
            raise DistributionError(404, "BLOB_UNKNOWN", f"blob {digest} not found")
        self._announce(digest)  # a pusher that finds it here will not upload it again
        return self.blobs.path(digest)

    def mount(self, digest: str) -> bool:
        """A cross-repository mount: free, since blobs are shared; False if it is absent."""
        if not self.blobs.has(self.check_digest(digest)):
            return False
        self._announce(digest)
        return True

    def _announce(self, digest: str) -> None:
        self._announced[digest] = time.monotonic()

    def gc_roots(self) -> list[str]:
        """What the blob collector must keep for the registry: every manifest it holds,
        and blobs announced to a client within the grace period (a push in flight)."""
        now = time.monotonic()
        self._announced = {d: t for d, t in self._announced.items() if now - t < self.grace}
        rows = self.store.query("SELECT DISTINCT digest FROM registry_manifests")
        return [*(str(row[0]) for row in rows), *self._announced]

    def start_upload(self) -> Upload:
        upload_id = str(uuid.uuid4())
        upload = Upload(upload_id, self.uploads_dir / upload_id)
        upload.path.touch()
        self._uploads[upload_id] = upload
        return upload

    def upload(self, upload_id: str) -> Upload:
        upload = self._uploads.get(upload_id)
        if upload is None:
            raise DistributionError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {upload_id} not found")
        return upload

    def check_chunk(self, upload: Upload, start: int) -> None:
        """A chunk must continue the upload where it stands (416 otherwise, per the spec)."""
        if start != upload.size:
            raise DistributionError(
                416,
                "BLOB_UPLOAD_INVALID",
                f"chunk starts at {start}, expected {upload.size}",
                headers={"Range": f"0-{max(upload.size - 1, 0)}"},
            )

    def append(self, upload: Upload, chunk: bytes, start: int | None = None) -> None:
        if upload.closed:
            raise DistributionError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {upload.id} has ended")
        if start is not None:
            self.check_chunk(upload, start)
        upload.touched = time.monotonic()
        with upload.path.open("ab") as out:
            out.write(chunk)
        upload.hasher.update(chunk)
        upload.size += len(chunk)

    def mark(self, upload: Upload) -> tuple[int, Any]:
        """Where an upload stands, to `rewind` to if the chunk that follows is refused."""
        return upload.size, upload.hasher.copy()

    def rewind(self, upload: Upload, mark: tuple[int, Any]) -> None:
        size, hasher = mark
        if upload.closed:
            return
        with upload.path.open("r+b") as out:
            out.truncate(size)
        upload.size, upload.hasher = size, hasher

    def finish_upload(self, upload: Upload, digest: str) -> None:
        self.check_digest(digest)
        if upload.closed:
            raise DistributionError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {upload.id} has ended")
        actual = f"sha256:{upload.hasher.hexdigest()}"
        try:
            if actual != digest:
                raise DistributionError(
                    400, "DIGEST_INVALID", f"uploaded content has digest {actual}, not {digest}"
                )
            self.blobs.adopt(upload.path, digest)
            self._announce(digest)
        finally:
            self.cancel_upload(upload)

    def cancel_upload(self, upload: Upload) -> None:
        upload.closed = True
        self._uploads.pop(upload.id, None)
        upload.path.unlink(missing_ok=True)

    def expire_uploads(self, max_age: float) -> int:
        """End the uploads that received nothing for `max_age` seconds (clients that gave
        up mid-push); return how many. A client that comes back gets a 404 and starts over,
        which the spec allows."""
        now = time.monotonic()
        idle = [u for u in self._uploads.values() if now - u.touched >= max_age]
        for upload in idle:
            self.cancel_upload(upload)
        return len(idle)

    # ---- manifests and tags ----------------------------------------------------------

    def put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str
    ) -> tuple[str, str]:
        """Store a manifest; return its digest and the media type it was stored with."""
        if len(body) > MAX_MANIFEST_BYTES:
            raise DistributionError(413, "SIZE_INVALID", "manifest is larger than 4 MiB")
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        if reference.startswith("sha256:") and reference != digest:
            raise DistributionError(400, "DIGEST_INVALID", f"manifest digest is {digest}")
        if not reference.startswith("sha256:") and not TAG_RE.match(reference):
            raise DistributionError(400, "TAG_INVALID", f"invalid tag {reference!r}")
        media_type = self._check_manifest(body, media_type)
        self.blobs.put_bytes(body, digest)
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO registry_manifests VALUES (?, ?, ?)",
                (repository, digest, media_type),
            )
            if not reference.startswith("sha256:"):
                conn.execute(
                    "INSERT OR REPLACE INTO registry_tags VALUES (?, ?, ?)",
                    (repository, reference, digest),
                )
        return digest, media_type

    def _check_manifest(self, body: bytes, declared_type: str) -> str:
        try:
            manifest = json.loads(body)
        except ValueError as exc:
            raise DistributionError(
                400, "MANIFEST_INVALID", f"manifest is not JSON: {exc}"
            ) from exc
        if not isinstance(manifest, dict):
            raise DistributionError(400, "MANIFEST_INVALID", "manifest must be a JSON object")
        media_type = str(manifest.get("mediaType") or declared_type.split(";")[0].strip())
        if media_type in IMAGE_MANIFEST_TYPES:
            wanted = [manifest.get("config", {}), *manifest.get("layers", [])]
            kind = "MANIFEST_BLOB_UNKNOWN"
        elif media_type in INDEX_TYPES:
            wanted = manifest.get("manifests", [])
            kind = "MANIFEST_UNKNOWN"
        else:
            raise DistributionError(
                415, "MANIFEST_INVALID", f"unsupported manifest media type {media_type!r}"
            )
        for descriptor in wanted:
            digest = descriptor.get("digest", "") if isinstance(descriptor, dict) else ""
            if not DIGEST_RE.match(digest) or not self.blobs.has(digest):
                raise DistributionError(400, kind, f"manifest references unknown {digest!r}")
        return media_type

    def resolve(self, repository: str, reference: str) -> tuple[str, str]:
        """A tag or digest in `repository` -> (digest, media type)."""
        if reference.startswith("sha256:"):
            rows = self.store.query(
                "SELECT digest, media_type FROM registry_manifests"
                " WHERE repository = ? AND digest = ?",
                (repository, reference),
            )
        else:
            rows = self.store.query(
                "SELECT m.digest, m.media_type FROM registry_tags t JOIN registry_manifests m"
                " ON m.repository = t.repository AND m.digest = t.digest"
                " WHERE t.repository = ? AND t.tag = ?",
                (repository, reference),
            )
        if not rows or not self.blobs.has(rows[0][0]):
            raise DistributionError(
                404, "MANIFEST_UNKNOWN", f"manifest {repository}:{reference} not found"
            )
        return str(rows[0][0]), str(rows[0][1])

    def manifest_digest(self, repository: str, reference: str) -> str:
        return self.resolve(repository, reference)[0]

    def tags(self, repository: str) -> list[str]:
        rows = self.store.query(
            "SELECT tag FROM registry_tags WHERE repository = ? ORDER BY tag", (repository,)
        )
        if not rows:
            raise DistributionError(404, "NAME_UNKNOWN", f"repository {repository!r} not found")
        return [str(row[0]) for row in rows]

    def delete_manifest(self, repository: str, reference: str) -> None:
        digest, _ = self.resolve(repository, reference)
        with self.store.transaction() as conn:
            conn.execute(
                "DELETE FROM registry_tags WHERE repository = ? AND digest = ?",
                (repository, digest),
            )
            conn.execute(
                "DELETE FROM registry_manifests WHERE repository = ? AND digest = ?",
                (repository, digest),
            )
