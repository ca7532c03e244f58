"""The push manager: records in the store, a FIFO queue served by one worker.

A push moves queued -> pushing -> pushed (or failed, with the registry's reason:
`registry host:5000: unauthorized (401) for app:v1`). The image is pinned from the
request until the push ends, so deleting it meanwhile cannot collect its blobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from functools import partial

from ember.errors import Conflict, EmberError, InvalidArgument
from ember.ids import new_id
from ember.images.distribution import Credentials, RegistryClient
from ember.images.manager import ImageManager
from ember.images.models import ImageStatus
from ember.images.reference import parse_reference
from ember.pushes import upload
from ember.pushes.models import IN_PROGRESS, PushProgress, PushRecord, PushStatus, utcnow
from ember.store import Repository, Store

log = logging.getLogger("ember.pushes")

INTERRUPTED = "interrupted by a restart of the server: push again"


class PushManager:
    def __init__(
        self, store: Store, images: ImageManager, insecure_registries: list[str] | None = None
    ) -> None:
        self.repo = Repository(store, "pushes", PushRecord, "push")
        self.images = images
        self.insecure = insecure_registries or []
        self._queue: asyncio.Queue[str] | None = None
        self._waiting: list[str] = []
        self._worker: asyncio.Task[None] | None = None
        self._jobs: dict[str, _Job] = {}  # pushes queued or running, by id

    # ---- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """A push cut short by a restart fails: its borrowed credentials are gone."""
        for record in self.repo.all():
            if record.status in IN_PROGRESS:
                self._end(record.id, PushStatus.FAILED, INTERRUPTED)
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._work())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    # ---- queries ---------------------------------------------------------------------

    def get(self, ref: str) -> PushRecord:
        return self.repo.resolve(ref)

    def list(self) -> list[PushRecord]:
        """Newest first."""
        return sorted(self.repo.all(), key=lambda r: r.created_at, reverse=True)

    def queue_position(self, record: PushRecord) -> int | None:
        return self._waiting.index(record.id) + 1 if record.id in self._waiting else None

    def progress(self, record: PushRecord) -> PushProgress | None:
        job = self._jobs.get(record.id)
        if record.status != PushStatus.PUSHING or job is None:
            return None
        return PushProgress(bytes_done=sum(job.sent.values()), bytes_total=job.plan.total)

    # ---- commands --------------------------------------------------------------------

    def create(
        self,
        image: str,
        target: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool = False,
    ) -> PushRecord:
        """Queue a push of a ready image to `target` (a tag in another registry)."""
        source = self.images.get(image)
        if source.status != ImageStatus.READY:
            raise Conflict(
                f"image {source.name!r} is not ready (status: {source.status})",
                code="image_not_ready",
            )
        try:
            ref = parse_reference(target)
        except InvalidArgument as exc:
            raise InvalidArgument(f"target: {exc.message}") from exc
        if ref.digest is not None:
            raise InvalidArgument(f"target: {target!r} names a digest; push to a tag")
        if ref.registry in self.images.local_hosts:
            raise InvalidArgument(
                f"target: {ref.registry} is this server's own registry; "
                "use POST /images/{name}/tag for another name"
            )
        push_id = new_id()
        # No await from here on: the collector cannot run between the pin and the reads.
        self.images.pin(_pin(push_id), source.digest)
        platform = source.platform or source.requested_platform
        try:
            plan = upload.plan(self.images.blobs, source.digest, platform)
        except (OSError, ValueError, EmberError) as exc:
            self.images.unpin(_pin(push_id))
            raise Conflict(f"image {source.name!r} cannot be pushed: {exc}") from exc
        record = PushRecord(
            id=push_id, name=push_id, image=source.name, digest=plan.digest, target=ref.name,
            layers=plan.layers, bytes=plan.layer_bytes,
        )  # fmt: skip
        self.repo.insert(record)
        self._jobs[push_id] = _Job(plan, credentials, insecure)
        assert self._queue is not None, "PushManager.open() was not called"
        self._waiting.append(push_id)
        self._queue.put_nowait(push_id)
        return record

    # ---- the worker ------------------------------------------------------------------

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            push_id = await self._queue.get()
            self._waiting.remove(push_id)
            try:
                await self._push(push_id)
            except asyncio.CancelledError:
                raise
            except EmberError as exc:
                self._end(push_id, PushStatus.FAILED, exc.message)
            except Exception as exc:
                log.exception("push failed", extra={"push_id": push_id})
                self._end(push_id, PushStatus.FAILED, f"internal error: {exc}")
            finally:
                self.images.unpin(_pin(push_id))
                self._jobs.pop(push_id, None)

    async def _push(self, push_id: str) -> None:
        record = self.repo.update(push_id, lambda r: setattr(r, "status", PushStatus.PUSHING))
        job = self._jobs[push_id]
        target = parse_reference(record.target)
        insecure = [*self.insecure, *([target.registry] if job.insecure else [])]
        async with RegistryClient(insecure=insecure, credentials=job.credentials) as client:
            await upload.push(client, self.images.blobs, job.plan, target, job.advance)
        self._end(push_id, PushStatus.PUSHED, None)
        log.info("image pushed", extra={"image": record.image, "target": record.target})

    def _end(self, push_id: str, status: PushStatus, error: str | None) -> None:
        self.repo.update(push_id, partial(_ended, status, error))
        if error:
            log.warning("push failed", extra={"push_id": push_id, "error": error})


def _pin(push_id: str) -> str:
    return f"push:{push_id}"


@dataclass
class _Job:
    """A push's memory-only part: its plan, borrowed credentials (never stored, as
    Hypeman's), whether plain HTTP was allowed, and what the target holds so far."""

    plan: upload.Plan
    credentials: Credentials | None
    insecure: bool
    sent: dict[str, int] = field(default_factory=dict)  # digest -> bytes

    def advance(self, digest: str, count: int) -> None:
        self.sent[digest] = count


def _ended(status: PushStatus, error: str | None, record: PushRecord) -> None:
    record.status, record.error, record.completed_at = status, error, utcnow()
