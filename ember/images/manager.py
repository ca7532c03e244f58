"""The image manager: records in the store, a bounded build queue, and the files on disk.

An image moves pending -> pulling -> converting -> ready (or failed). Workers
take images off one FIFO queue, so `queue_position` is simply the place in
it. Root disks live at `images/<digest>/rootfs.erofs`, one per digest: several
names (tags) may point at one digest, and a digest already converted is never
pulled or converted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Protocol

from ember.errors import Conflict, EmberError, InvalidArgument, NotFound
from ember.ids import new_id
from ember.images import gc
from ember.images.blobs import BlobStore
from ember.images.distribution import Credentials, RegistryClient
from ember.images.models import (
    IN_PROGRESS,
    BuildPhase,
    BuildProgress,
    ImageRecord,
    ImageSource,
    ImageStatus,
)
from ember.images.pull import Keep, PulledImage, StepProgress, convert, fetch, load_local
from ember.images.reference import ImageRef, parse_reference, unqualified
from ember.store import Repository, Store
from ember.validation import validate_tags

log = logging.getLogger("ember.images")

ROOTFS_NAME = "rootfs.erofs"
SUPPORTED_PLATFORMS = ("linux/amd64", "linux/arm64")
# A `POST /images` of a ready tag asks the registry once, this long at most, whether the
# tag has moved; no answer keeps the image pulled before.
RESOLVE_TIMEOUT = 5.0
WAIT_POLL_SECONDS = 0.1  # how often `wait_ready` looks at the image's status
# The names of the instances booting from a digest; passed in by the server (instances
# depend on images, never the reverse).
DigestUsers = Callable[[str], list[str]]


class LocalRegistry(Protocol):
    """The built-in registry, as the image manager needs it (`ember.registry.Registry`).

    A Protocol, not an import: the registry stores its blobs in this package's
    `BlobStore`, so this package must not depend on it.
    """

    @property
    def hosts(self) -> frozenset[str]:
        """The `host[:port]` names of this server: references to them resolve locally."""
        ...

    def manifest_digest(self, repository: str, reference: str) -> str:
        """(repository, tag or digest) -> manifest digest; NotFound-like error if absent."""
        ...

    def gc_roots(self) -> Iterable[str]:
        """Digests the registry needs kept: its manifests, and blobs pushed but not named."""
        ...


def validate_platform(platform: str | None) -> str:
    value = platform or "linux/amd64"
    parts = value.split("/")
    if len(parts) not in (2, 3) or f"{parts[0]}/{parts[1]}" not in SUPPORTED_PLATFORMS:
        raise InvalidArgument(
            f"platform: {value!r} is not supported (use one of {', '.join(SUPPORTED_PLATFORMS)})",
            code="invalid_platform",
        )
    return value


class ImageManager:
    def __init__(
        self,
        store: Store,
        data_dir: Path,
        blobs: BlobStore,
        *,
        local_registry: LocalRegistry,
        digest_users: DigestUsers,
        concurrency: int = 2,
        insecure_registries: list[str] | None = None,
    ) -> None:
        """Both links are required, with no default: a default of "no registry" or "no
        instance uses anything" would silently switch off the registry's GC roots and the
        image-in-use check when a caller forgot to wire them."""
        self.repo = Repository(store, "images", ImageRecord, "image")
        self.blobs = blobs  # shared with the built-in registry: one store, one collector
        self.images_dir = data_dir / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.concurrency = concurrency
        self.insecure = insecure_registries or []
        # Instances booting from a digest: its images cannot be deleted, its disk stays.
        self._digest_users = digest_users
        # References to its hosts resolve from its tables, with no HTTP.
        self._local = local_registry
        self._queue: asyncio.Queue[str] | None = None
        self._waiting: list[str] = []
        # Borrowed registry credentials: memory only, dropped once the pull ends.
        self._credentials: dict[str, Credentials] = {}
        # How far each image being built has got: memory only, gone when the build ends.
        # Each report replaces the entry whole, so a reader never sees half an update.
        self._progress: dict[str, BuildProgress] = {}
        # Digests each build relies on, named before it looks for them in the store: the
        # garbage collector keeps them (and what they refer to) until the build ends.
        self._pins: dict[str, set[str]] = {}
        self._workers: list[asyncio.Task[None]] = []

    # ---- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        self._queue = asyncio.Queue()
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.concurrency)]
        for record in self.repo.all():
            if record.status in IN_PROGRESS:
                self._resume(record)

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    def _resume(self, record: ImageRecord) -> None:
        """After a restart: an interrupted pull starts over (cached blobs make that cheap)."""
        if record.id in self._credentials or not record.name:
            return
        self._set_status(record.id, ImageStatus.PENDING)
        self._enqueue(record.id)

    # ---- queries ---------------------------------------------------------------------

    def get(self, name: str) -> ImageRecord:
        """Find an image by reference (normalized or not), or by digest.

        `repo@digest` also finds an image pulled by tag whose digest that is; a reference
        that does not parse (and is not a bare digest) is an InvalidArgument naming why.
        """
        record = self.repo.by_name(self.own_name(name))
        if record is None and name.startswith("sha256:"):
            record = next((r for r in self.repo.all() if r.digest == name), None)
        elif record is None:
            ref = parse_reference(name)
            record = self.repo.by_name(ref.name)
            if record is None and ref.digest is not None:
                record = self._by_digest(ref.registry, ref.repository, ref.digest)
        if record is None:
            raise NotFound(f"image {name!r} not found")
        return record

    @property
    def local_hosts(self) -> frozenset[str]:
        """The `host[:port]` names of this server's own registry."""
        return self._local.hosts

    def own_name(self, name: str) -> str:
        """Ember's own registry first: a name with no registry host (`app:v1`) that this
        server's registry holds is that image (`127.0.0.1:4973/app:v1`, under the host it
        was pushed to), not Docker Hub's `docker.io/library/app:v1`. Any other name is
        answered as given."""
        short = unqualified(name) if not name.startswith("sha256:") else None
        if short is None:
            return name
        for host in sorted(self._local.hosts):
            if self.repo.by_name(f"{host}/{short}") is not None:
                return f"{host}/{short}"
        return name

    def _by_digest(self, registry: str, repository: str, digest: str) -> ImageRecord | None:
        """A ready image of `registry/repository` (under any tag) whose digest is `digest`."""
        for record in self.repo.all():
            if record.status != ImageStatus.READY or record.digest != digest:
                continue
            with contextlib.suppress(InvalidArgument):
                ref = parse_reference(record.name)
                if (ref.registry, ref.repository) == (registry, repository):
                    return record
        return None

    def find(self, tags: dict[str, str] | None = None) -> list[ImageRecord]:
        wanted = (tags or {}).items()
        return [r for r in self.repo.all() if wanted <= r.tags.items()]

    def queue_position(self, record: ImageRecord) -> int | None:
        return self._waiting.index(record.id) + 1 if record.id in self._waiting else None

    def progress(self, record: ImageRecord) -> BuildProgress | None:
        """A snapshot of the build's progress while it is pulling or converting, else None."""
        if record.status not in (ImageStatus.PULLING, ImageStatus.CONVERTING):
            return None
        return self._progress.get(record.id)

    async def wait_ready(self, name: str, timeout: float) -> None:
        """Wait up to `timeout` seconds while the image `name` is being pulled, so that
        an instance created right after `POST /images` finds it ready. Returns at once
        for an image that is ready, failed or unknown (the caller's lookup says which)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                record = self.get(name)
            except EmberError:
                return
            if record.status in (ImageStatus.READY, ImageStatus.FAILED):
                return
            await asyncio.sleep(WAIT_POLL_SECONDS)

    def rootfs_path(self, record: ImageRecord) -> Path:
        if record.status != ImageStatus.READY:  # 400 as in Hypeman: the request names it
            raise InvalidArgument(
                f"image {record.name!r} is not ready (status: {record.status})",
                code="image_not_ready",
            )
        return self.images_dir / record.digest / ROOTFS_NAME

    def rootfs_of(self, digest: str) -> Path:
        """The root disk built for `digest`, which outlives its image record while in use."""
        path = self.images_dir / digest / ROOTFS_NAME
        if not digest or not path.exists():
            raise Conflict(
                f"the root disk of image {digest or '(none)'} is gone", code="image_gone"
            )
        return path

    def release_rootfs(self, digest: str) -> None:
        """Remove a digest's root disk once no image record and no instance needs it."""
        if not digest or any(r.digest == digest for r in self.repo.all()):
            return
        if not self._digest_users(digest):
            shutil.rmtree(self.images_dir / digest, ignore_errors=True)

    # ---- commands --------------------------------------------------------------------

    async def create(
        self,
        name: str,
        *,
        tags: dict[str, str] | None = None,
        platform: str | None = None,
        credentials: Credentials | None = None,
    ) -> ImageRecord:
        """Pull `name`, unless it is pulled (and its tag still names that digest) or in progress.

        A ready image named by tag is checked against its registry (a manifest `HEAD`, or
        the built-in registry's own table): if the tag has moved, the old record steps
        aside as `repository@old-digest` and a new pull takes the name. The request's
        `tags` are merged into whichever record is answered.
        """
        ref = parse_reference(self.own_name(name))
        tags = validate_tags(tags)
        asked_platform = platform
        platform = validate_platform(platform)
        existing = self.repo.by_name(ref.name)
        if existing is not None and existing.status == ImageStatus.READY and ref.digest is None:
            current = await self._current_digest(ref, credentials)
            existing = self.repo.by_name(ref.name)  # another request may have acted meanwhile
            if (
                current is not None
                and existing is not None
                and existing.status == ImageStatus.READY
                and existing.digest != current
            ):
                log.info(
                    "tag moved: pulling again",
                    extra={"image": ref.name, "old": existing.digest, "new": current},
                )
                tags = {**existing.tags, **tags}
                platform = platform if asked_platform else existing.requested_platform
                self._step_aside(existing, ref)
                existing = None
        if existing is not None and existing.status != ImageStatus.FAILED:
            # pulled or being pulled: no work, but the request's tags are kept
            if tags and not tags.items() <= existing.tags.items():
                return self.repo.update(existing.id, lambda r: _merge_tags(r, tags))
            return existing
        if existing is not None:
            self.repo.delete(existing.id)
        record = self.repo.insert(
            ImageRecord(id=new_id(), name=ref.name, tags=tags, requested_platform=platform)
        )
        if credentials:
            self._credentials[record.id] = credentials
        self._enqueue(record.id)
        return record

    async def _current_digest(self, ref: ImageRef, credentials: Credentials | None) -> str | None:
        """The digest the tag names now, or None (with a warning) if that cannot be known."""
        try:
            if ref.registry in self._local.hosts:
                return self._local.manifest_digest(ref.repository, ref.reference)
            async with RegistryClient(
                insecure=self.insecure, credentials=credentials, timeout=RESOLVE_TIMEOUT
            ) as client:
                return await client.resolve_digest(ref, attempts=1)
        except EmberError as exc:
            log.warning(
                "cannot check the tag for a newer digest; answering the image pulled before",
                extra={"image": ref.name, "error": exc.message},
            )
            return None

    def _step_aside(self, record: ImageRecord, ref: ImageRef) -> None:
        """A ready image whose tag moved keeps its content as `registry/repository@digest`."""
        digest_name = f"{ref.registry}/{ref.repository}@{record.digest}"
        if self.repo.by_name(digest_name) is None:
            self.repo.update(record.id, lambda r: setattr(r, "name", digest_name))
        else:  # that record already keeps the digest (and its root disk and blobs)
            self.repo.delete(record.id)

    def tag(self, name: str, target: str) -> ImageRecord:
        """Point another reference at an existing image's digest, without pulling."""
        source = self.get(name)
        if source.status != ImageStatus.READY:
            raise Conflict(f"image {source.name!r} is not ready (status: {source.status})")
        target_ref = parse_reference(target)
        if target_ref.digest is not None and target_ref.digest != source.digest:
            raise InvalidArgument(f"target: {target!r} names a different digest")
        existing = self.repo.by_name(target_ref.name)
        fields = source.model_dump(exclude={"id", "name", "created_at"})
        if existing is not None:
            return self.repo.update(existing.id, lambda r: _assign(r, fields))
        return self.repo.insert(ImageRecord(id=new_id(), name=target_ref.name, **fields))

    def delete(self, name: str) -> None:
        """Delete an image name. Refused while instances use its digest, unless another name
        keeps the digest (and its root disk): then only this name goes, as `docker rmi`
        of one of several tags."""
        record = self.get(name)
        named_elsewhere = any(
            r.digest == record.digest and r.id != record.id for r in self.repo.all()
        )
        if record.digest and not named_elsewhere and (users := self._digest_users(record.digest)):
            raise Conflict(
                f"image {record.name!r} is used by instance(s) {', '.join(users)}",
                code="image_in_use",
            )
        if record.status in IN_PROGRESS:
            raise Conflict(f"image {record.name!r} is still being pulled ({record.status})")
        self.repo.delete(record.id)
        self.release_rootfs(record.digest)
        self.collect_garbage()

    def pin(self, key: str, digest: str) -> None:
        """Keep `digest` and all it names from the collector until `unpin(key)`: for work
        outside this manager that reads an image's blobs (a push to another registry).
        `key` must not be an image id."""
        self._pins.setdefault(key, set()).add(digest)

    def unpin(self, key: str) -> None:
        self._pins.pop(key, None)

    def collect_garbage(self) -> gc.Collected:
        """Remove the blobs nothing needs any more (the rule is in the package README).

        Runs on the event loop with no await, so no pull or push step interleaves with it;
        it never raises: a failure only leaves garbage for the next time.
        """
        records = self.repo.all()
        ready = [r.digest for r in records if r.status == ImageStatus.READY and r.digest]
        roots = [r.digest for r in records if r.status != ImageStatus.FAILED and r.digest]
        roots += [digest for pins in self._pins.values() for digest in pins]
        try:
            roots += self._local.gc_roots()
            collected = gc.sweep(self.blobs, gc.reachable(self.blobs, roots, ready))
        except gc.MissingManifest as exc:
            log.warning("blob collection skipped: %s", exc.message)
            return gc.Collected()
        except Exception:
            log.exception("blob collection failed")
            return gc.Collected()
        if collected.blobs:
            log.info("blobs collected", extra={"blobs": collected.blobs, "bytes": collected.bytes})
        return collected

    def import_pushed(self, name: str, manifest_digest: str) -> ImageRecord:
        """A manifest pushed to the built-in registry: convert it from local blobs."""
        ref = parse_reference(name)
        existing = self.repo.by_name(ref.name)
        if (
            existing is not None
            and existing.digest == manifest_digest
            and (existing.status != ImageStatus.FAILED)
        ):
            return existing
        if existing is not None:
            if existing.status in IN_PROGRESS:
                raise Conflict(f"image {ref.name!r} is being pulled; push again when it is done")
            self.repo.delete(existing.id)
            self.release_rootfs(existing.digest)  # instances made from it keep theirs
        record = self.repo.insert(
            ImageRecord(id=new_id(), name=ref.name, digest=manifest_digest, source=ImageSource.PUSH)
        )
        self._enqueue(record.id)
        return record

    # ---- the build pipeline ----------------------------------------------------------

    def _enqueue(self, record_id: str) -> None:
        assert self._queue is not None, "ImageManager.open() was not called"
        self._waiting.append(record_id)
        self._queue.put_nowait(record_id)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            record_id = await self._queue.get()
            self._waiting.remove(record_id)
            failed = False
            try:
                await self._build(record_id)
            except asyncio.CancelledError:
                raise
            except EmberError as exc:
                failed = True
                self._fail(record_id, exc.message)
            except Exception as exc:
                failed = True
                log.exception("image build failed", extra={"image_id": record_id})
                self._fail(record_id, f"internal error: {exc}")
            finally:
                self._credentials.pop(record_id, None)
                self._progress.pop(record_id, None)
                self._pins.pop(record_id, None)
            if failed:  # what the failed pull fetched goes, unless something else uses it
                self.collect_garbage()

    async def _build(self, record_id: str) -> None:
        record = self.repo.get(record_id)
        if record is None:  # deleted while queued
            return
        ref = parse_reference(record.name)
        keep = self._pins.setdefault(record_id, set()).add
        if record.digest:
            keep(record.digest)  # a pushed image: its manifest is known from the start
        report = partial(self._report, record_id)
        report("resolving", None, None)
        self._set_status(record_id, ImageStatus.PULLING)
        pulled = await self._fetch(record, ref, report, keep)
        record = self.repo.update(record_id, lambda r: _apply_metadata(r, pulled))
        rootfs_dir = self.images_dir / pulled.digest
        if not (rootfs_dir / ROOTFS_NAME).exists():
            report("unpacking", 0, pulled.size or None)
            self._set_status(record_id, ImageStatus.CONVERTING)
            await asyncio.to_thread(convert, pulled, self.blobs, rootfs_dir, report)
        size = (rootfs_dir / ROOTFS_NAME).stat().st_size
        self.repo.update(record_id, lambda r: _ready(r, size))
        log.info("image ready", extra={"image": record.name, "digest": pulled.digest})

    def _report(
        self, record_id: str, phase: BuildPhase, done: int | None, total: int | None
    ) -> None:
        """Progress of a build (also called from the conversion's thread)."""
        self._progress[record_id] = BuildProgress.model_construct(
            phase=phase, bytes_done=done, bytes_total=total
        )

    async def _fetch(
        self, record: ImageRecord, ref: ImageRef, report: StepProgress, keep: Keep
    ) -> PulledImage:
        if record.source == ImageSource.PUSH:
            return await asyncio.to_thread(load_local, record.digest, self.blobs)
        if ref.registry in self._local.hosts:
            digest = self._local.manifest_digest(ref.repository, ref.reference)
            keep(digest)  # kept with all it names, before the thread reads any of it
            return await asyncio.to_thread(
                load_local, digest, self.blobs, record.requested_platform
            )
        async with RegistryClient(
            insecure=self.insecure, credentials=self._credentials.get(record.id)
        ) as client:
            return await fetch(ref, client, self.blobs, record.requested_platform, report, keep)

    def _set_status(self, record_id: str, status: ImageStatus) -> None:
        self.repo.update(record_id, lambda r: setattr(r, "status", status))

    def _fail(self, record_id: str, message: str) -> None:
        with contextlib.suppress(NotFound):
            self.repo.update(record_id, lambda r: _failed(r, message))
        log.warning("image failed", extra={"image_id": record_id, "error": message})


def _apply_metadata(record: ImageRecord, pulled: PulledImage) -> None:
    record.digest = pulled.digest
    record.platform = pulled.platform
    record.entrypoint = pulled.entrypoint
    record.cmd = pulled.cmd
    record.env = pulled.env
    record.working_dir = pulled.working_dir
    record.user = pulled.user


def _ready(record: ImageRecord, size: int) -> None:
    record.status, record.size_bytes, record.error = ImageStatus.READY, size, None


def _failed(record: ImageRecord, message: str) -> None:
    record.status, record.error = ImageStatus.FAILED, message


def _merge_tags(record: ImageRecord, tags: dict[str, str]) -> None:
    record.tags = {**record.tags, **tags}


def _assign(record: ImageRecord, fields: dict[str, object]) -> None:
    for key, value in fields.items():
        setattr(record, key, value)
