"""A content-addressed blob store shared by every image and the built-in registry.

Blobs live at `<root>/sha256/<hex>`. Writers stream into a temporary file in
the same filesystem, hash while writing, and rename into place only when the
digest (and size, when known) matches: a blob at its final path is always
complete and verified, so a crash or a bad download can never leave a
corrupt blob that later pulls would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ember.errors import EmberError, InvalidArgument

DIGEST_PREFIX = "sha256:"


class DigestMismatch(EmberError):
    code = "digest_mismatch"


def _hex(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise InvalidArgument(f"unsupported or malformed digest {digest!r}")
    return value


class BlobWriter:
    """Bytes on their way into the store; `BlobStore.writer` commits or discards them."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.hasher.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return DIGEST_PREFIX + self.hasher.hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "sha256"
        self.tmp_dir = root / "tmp"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        # Whatever a killed server was writing is garbage: nothing reads from tmp/.
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)

    def path(self, digest: str) -> Path:
        return self.blobs_dir / _hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def digests(self) -> list[str]:
        """Every blob at its final path (temp files and work dirs are not blobs)."""
        return [
            DIGEST_PREFIX + entry.name
            for entry in os.scandir(self.blobs_dir)
            if len(entry.name) == 64 and all(c in "0123456789abcdef" for c in entry.name)
        ]

    def remove(self, digest: str) -> int:
        """Delete a blob; return the bytes freed (0 if it was not there)."""
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def read_json(self, digest: str) -> Any:
        return json.loads(self.path(digest).read_bytes())

    @contextmanager
    def writer(self, digest: str, expected_size: int | None = None) -> Iterator[BlobWriter]:
        """Stream a blob in; on leaving the block it is verified and committed, or discarded."""
        final = self.path(digest)
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="blob-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                blob = BlobWriter(out)
                yield blob
            if blob.digest != digest:
                raise DigestMismatch(f"blob {digest} failed verification: content is {blob.digest}")
            if expected_size is not None and blob.size != expected_size:
                raise DigestMismatch(
                    f"blob {digest} has {blob.size} bytes, the manifest says {expected_size}"
                )
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes, digest: str) -> None:
        if self.has(digest):
            return
        with self.writer(digest, len(data)) as blob:
            blob.write(data)

    def adopt(self, path: Path, digest: str) -> None:
        """Move an already-verified file into the store (same filesystem: a rename)."""
        os.replace(path, self.path(digest))

    def scratch_dir(self) -> Path:
        """A fresh directory on the store's filesystem, for work that ends in a rename."""
        return Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="work-"))
