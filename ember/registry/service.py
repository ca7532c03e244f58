"""The built-in registry as the API uses it: storage plus what a push does to images.

`Registry` stores blobs, manifests and tags; `RegistryService` adds the links
to the image manager (a pushed tag becomes an image, a deleted manifest lets
the collector run) and the background expiry of abandoned uploads, so the
`/v2/` route only translates HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable

from ember.images.manager import ImageManager
from ember.registry.registry import DistributionError, Registry, Upload, parse_content_range

log = logging.getLogger("ember.registry")

# How often idle uploads are looked for, at most: a fraction of the allowed age, so an
# upload outlives its age by little, and never more than a minute.
MAX_SWEEP_INTERVAL = 60.0


class RegistryService:
    def __init__(
        self, storage: Registry, images: ImageManager, *, upload_max_age: float,
        aliases: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """`upload_max_age`: seconds an upload may receive nothing before it is dropped;
        `aliases`: other `host:port`s clients push through, mapped to the name images get
        (the builds' registry relay -> the server's own address)."""
        if upload_max_age <= 0:
            raise ValueError("upload_max_age must be positive")
        self.storage = storage
        self._images = images
        self.upload_max_age = upload_max_age
        self.aliases = aliases or {}
        self._sweeper: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_uploads())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_uploads(self) -> None:
        interval = min(self.upload_max_age / 2, MAX_SWEEP_INTERVAL)
        while True:
            await asyncio.sleep(interval)
            if expired := self.storage.expire_uploads(self.upload_max_age):
                log.info("abandoned uploads expired", extra={"uploads": expired})

    # ---- uploads ---------------------------------------------------------------------

    async def receive(
        self,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        content_range: str | None = None,
        content_length: str | None = None,
    ) -> Upload:
        """Append a request body to an upload. With a `Content-Range`, the chunk must
        start where the upload stands (else 416) and, when the length is declared too,
        match it (else 400): checked before a byte is written. A body (chunked, so of no
        declared length) that turns out longer or shorter than its range is a 400 too, and
        the upload is rewound to where it stood before it."""
        upload = self.storage.upload(upload_id)
        if not content_range:
            async for chunk in chunks:
                if chunk:
                    self.storage.append(upload, chunk)
            return upload
        start, end = parse_content_range(content_range)
        self.storage.check_chunk(upload, start)
        covers = end - start + 1
        if content_length is not None and content_length.strip() != str(covers):
            raise DistributionError(
                400,
                "BLOB_UPLOAD_INVALID",
                f"Content-Range: {content_range!r} covers {covers} bytes, "
                f"Content-Length says {content_length}",
            )
        mark = self.storage.mark(upload)
        received = 0
        async for chunk in chunks:
            received += len(chunk)
            if received > covers:
                break
            if chunk:
                self.storage.append(upload, chunk)
        if received != covers:
            self.storage.rewind(upload, mark)
            said = "more than" if received > covers else f"{received} bytes, not"
            raise DistributionError(
                400,
                "BLOB_UPLOAD_INVALID",
                f"Content-Range: {content_range!r} covers {covers} bytes; the body held {said} "
                "that; nothing of it was kept",
            )
        return upload

    # ---- manifests -------------------------------------------------------------------

    def push_manifest(
        self, host: str, repository: str, reference: str, body: bytes, media_type: str
    ) -> str:
        """Store a pushed manifest; a tag also becomes the Ember image `host/repo:tag`
        (named as a pull from this server would name it). Returns the digest."""
        digest, _ = self.storage.put_manifest(repository, reference, body, media_type)
        if not reference.startswith("sha256:"):
            host = self.aliases.get(host, host)
            self._images.import_pushed(f"{host}/{repository}:{reference}", digest)
        return digest

    def delete_manifest(self, repository: str, reference: str) -> None:
        """Untag and forget a manifest, then collect: blobs only it named may go now."""
        self.storage.delete_manifest(repository, reference)
        self._images.collect_garbage()
