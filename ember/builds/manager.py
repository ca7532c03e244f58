"""Builders and builds: records, the per-builder queue, cancel, and the run of each build.

A builder is a persistent cache disk (an Ember volume). Its builds run one at a time, in
the order they were asked for: `_queues[builder]` holds the waiting ids, `_active` the
running one. Each build runs as a task this manager owns (`_tasks`); cancel cancels it,
and the runner's `finally` deletes the builder VM. States (`models.BuildStatus`):

    queued -> building -> pushing -> ready
       \\          \\           \\-> failed | cancelled
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ember.builds.detect import BASES, detect_source
from ember.builds.events import EventLog
from ember.builds.models import (
    DEFAULT_BUILDER,
    TERMINAL,
    BuilderRecord,
    BuilderStatus,
    BuildEvent,
    BuildOptions,
    BuildRecord,
    BuildStatus,
    Provenance,
    utcnow,
)
from ember.builds.rootfs import BUILDER, Recipe
from ember.builds.runner import BuildFailed, BuildTools, Inputs, run_build
from ember.builds.templates import TEMPLATE_TAG, BuilderTemplates
from ember.errors import Conflict, EmberError, InvalidArgument, InvalidState, NotFound
from ember.ids import new_id
from ember.images.manager import ImageManager
from ember.images.models import ImageStatus
from ember.instances import InstanceManager
from ember.registry import DistributionError, RegistryService
from ember.store import Repository, Store
from ember.templates import Templates
from ember.volumes import VolumeManager

__all__ = ["BuildManager", "BuildSettings"]

log = logging.getLogger(__name__)

IMAGE_READY_SECONDS = 600.0
BASE_ANNOTATION = "org.opencontainers.image.base.digest"


@dataclass(frozen=True)
class BuildSettings:
    root: Path  # <data_dir>/builds
    registry_host: str  # how Ember's registry names its images (the server's listen address)
    own_hosts: frozenset[str]  # every name of Ember's registry a Dockerfile may use
    relay: str | None  # host:port guests reach the registry at (None: no network)
    default_disk_gb: int = 10
    secrets_dir: Path | None = None  # server-side secret values, one file per id


class BuildManager:
    def __init__(
        self,
        store: Store,
        settings: BuildSettings,
        *,
        instances: InstanceManager,
        images: ImageManager,
        registry: RegistryService,
        volumes: VolumeManager,
        templates: Templates,
        debian_image: Callable[[Recipe], Awaitable[str]],
        mint_token: Callable[[], str],
    ) -> None:
        self.settings = settings
        self.builds = Repository(store, "builds", BuildRecord, "build")
        self.builders = Repository(store, "builders", BuilderRecord, "builder")
        self.instances, self.images, self.registry = instances, images, registry
        self.volumes = volumes
        self._debian_image, self._mint_token = debian_image, mint_token
        self.templates = BuilderTemplates(templates, images, partial(debian_image, BUILDER))
        self.events = EventLog(settings.root)
        self._queues: dict[str, list[str]] = {}  # builder id -> waiting build ids, oldest first
        self._active: dict[str, str] = {}  # builder id -> running build id
        self._tasks: dict[str, asyncio.Task[None]] = {}  # build id -> its run
        self._secrets: dict[str, dict[str, str]] = {}  # build id -> values (memory only)
        self._wake: dict[str, asyncio.Event] = {}
        self._versions: dict[str, str] = {}  # buildah's, per builder image digest

    # ---- server lifecycle --------------------------------------------------------------

    async def open(self) -> None:
        """Builds cut short by a stopped server fail (their VMs are gone with them)."""
        self.settings.root.mkdir(parents=True, exist_ok=True)
        for record in self.builds.all():
            if record.status not in TERMINAL:
                await self._finish(record.id, BuildStatus.FAILED, error="the server restarted")
        for instance in self.instances.find():
            if {"ember.build", TEMPLATE_TAG} & instance.tags.keys():  # left by a stopped server
                with contextlib.suppress(EmberError):
                    await self.instances.delete(instance.id)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- builders ----------------------------------------------------------------------

    async def create_builder(
        self, *, name: str | None, disk_size_gb: int | None, id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> BuilderRecord:  # fmt: skip
        builder_id = id or new_id()
        if self.builders.get(builder_id) is not None:
            raise Conflict(f"builder {builder_id!r} already exists", code="already_exists")
        size = disk_size_gb or self.settings.default_disk_gb
        volume = await self.volumes.create(f"builder-cache-{builder_id.lower()}", size)
        record = BuilderRecord(id=builder_id, name=name or "", disk_size_gb=size,
                               volume_id=volume.id, tags=tags or {})  # fmt: skip
        try:
            return self.builders.insert(record)
        except BaseException:
            self.volumes.delete(volume.id)
            raise

    def get_builder(self, ref: str) -> BuilderRecord:
        record = self.builders.get(ref)
        if record is None:
            raise NotFound(f"builder {ref!r} not found")
        return record

    def find_builders(self, tags: dict[str, str] | None = None) -> list[BuilderRecord]:
        wanted = (tags or {}).items()
        return [r for r in self.builders.all() if wanted <= r.tags.items()]

    def queued_builds(self, builder_id: str) -> list[str]:
        return list(self._queues.get(builder_id, []))

    def active_build(self, builder_id: str) -> str | None:
        return self._active.get(builder_id)

    def _check_idle(self, builder: BuilderRecord, doing: str) -> None:
        if builder.id in self._active or self._queues.get(builder.id):
            raise Conflict(f"builder {builder.id!r} has builds running or queued: cannot "
                           f"{doing} it now", code="builder_in_use")  # fmt: skip
        if builder.status != BuilderStatus.READY:
            raise InvalidState(f"builder {builder.id!r} is {builder.status}")

    async def delete_builder(self, ref: str) -> None:
        builder = self.get_builder(ref)
        self._check_idle(builder, "delete")
        self.builders.update(builder.id, lambda r: setattr(r, "status", BuilderStatus.DELETING))
        with contextlib.suppress(NotFound):
            self.volumes.delete(builder.volume_id)
        self.builders.delete(builder.id)

    async def prune_builder(self, ref: str) -> BuilderRecord:
        """A fresh cache disk in place of the old one; the builder keeps its identity."""
        builder = self.get_builder(ref)
        self._check_idle(builder, "prune")
        self.builders.update(builder.id, lambda r: setattr(r, "status", BuilderStatus.PRUNING))
        try:
            old = self.volumes.get(builder.volume_id)
            self.volumes.delete(old.id)
            volume = await self.volumes.create(old.name, builder.disk_size_gb)
        except BaseException:
            self.builders.update(builder.id, lambda r: setattr(r, "status", BuilderStatus.ERROR))
            raise

        def ready(r: BuilderRecord) -> None:
            r.volume_id, r.status = volume.id, BuilderStatus.READY

        return self.builders.update(builder.id, ready)

    # ---- builds ------------------------------------------------------------------------

    def get(self, ref: str) -> BuildRecord:
        record = self.builds.get(ref)
        if record is None:
            raise NotFound(f"build {ref!r} not found")
        return record

    def find(self, tags: dict[str, str] | None = None) -> list[BuildRecord]:
        wanted = (tags or {}).items()
        return sorted((r for r in self.builds.all() if wanted <= r.tags.items()),
                      key=lambda r: r.created_at)  # fmt: skip

    def queue_position(self, record: BuildRecord) -> int | None:
        """1 for the next build to run on its builder; None unless queued."""
        queue = self._queues.get(record.options.builder_id, [])
        return queue.index(record.id) + 1 if record.id in queue else None

    async def create(
        self, source: AsyncIterable[bytes], options: BuildOptions, *,
        tags: dict[str, str], secrets: dict[str, str | None], id: str | None = None,
    ) -> BuildRecord:  # fmt: skip
        """Receive the source and queue the build on its builder (`default` if none)."""
        if options.builder_id != DEFAULT_BUILDER:
            self.get_builder(options.builder_id)  # a 404 first
        if self.settings.relay is None:
            raise InvalidState(
                "builds need the network (builder VMs reach the registry "
                "over it); this server runs with EMBER_NETWORK_ENABLED=false"
            )
        if options.builder_id == DEFAULT_BUILDER and self.builders.get(DEFAULT_BUILDER) is None:
            await self.create_builder(name=DEFAULT_BUILDER, disk_size_gb=None, id=DEFAULT_BUILDER)
        builder = self.get_builder(options.builder_id)
        if builder.status != BuilderStatus.READY:
            raise InvalidState(f"builder {builder.id!r} is {builder.status}: it cannot take "
                               "a build now")  # fmt: skip
        values = self._secret_values(secrets)
        build_id = id or new_id()
        record = BuildRecord(id=build_id, name=build_id, options=options, tags=tags)
        directory = self.settings.root / record.id
        directory.mkdir(parents=True)
        try:
            source_hash = await _receive(source, directory / "source.tar.gz")
            if options.dockerfile is None:
                detected = detect_source(directory / "source.tar.gz")
                if detected is not None:
                    record.language, record.generated_dockerfile = (
                        detected.language,
                        detected.template,
                    )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        record.provenance = Provenance(source_hash=source_hash)
        self.builds.insert(record)
        self._secrets[record.id] = values
        self._queues.setdefault(builder.id, []).append(record.id)
        await self.events.status(record.id, BuildStatus.QUEUED)
        self._tasks[record.id] = asyncio.create_task(
            self._run(record.id), name=f"build-{record.id}"
        )
        return record

    def _secret_values(self, secrets: dict[str, str | None]) -> dict[str, str]:
        """A value given in the request, else the server's secret file of that id."""
        values: dict[str, str] = {}
        for secret_id, value in secrets.items():
            path = self.settings.secrets_dir / secret_id if self.settings.secrets_dir else None
            if value is None and (path is None or not path.is_file()):
                raise InvalidArgument(
                    f"secret {secret_id!r} has no value: give one in the "
                    "request or store it on the server",
                    code="unknown_secret",
                )
            values[secret_id] = value if value is not None else path.read_text()  # type: ignore[union-attr]
        return values

    async def cancel(self, ref: str) -> None:
        record = self.get(ref)
        if record.status in TERMINAL:
            raise Conflict(f"build {record.id!r} has already ended ({record.status})",
                           code="build_completed")  # fmt: skip
        task = self._tasks.get(record.id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- one build's run -----------------------------------------------------------------

    def _wake_event(self, builder_id: str) -> asyncio.Event:
        return self._wake.setdefault(builder_id, asyncio.Event())

    async def _await_turn(self, record: BuildRecord) -> None:
        builder_id, queue = record.options.builder_id, self._queues[record.options.builder_id]
        while queue[0] != record.id or builder_id in self._active:
            event = self._wake_event(builder_id)
            event.clear()
            await event.wait()
        queue.pop(0)
        self._active[builder_id] = record.id

    def _leave(self, record: BuildRecord) -> None:
        builder_id = record.options.builder_id
        queue = self._queues.get(builder_id, [])
        if record.id in queue:
            queue.remove(record.id)
        if self._active.get(builder_id) == record.id:
            del self._active[builder_id]
        self._wake_event(builder_id).set()

    async def _run(self, build_id: str) -> None:
        record = self.get(build_id)
        released = asyncio.Event()  # the cache disk is in no VM: the builder may go on
        pushed = False
        prior: str | None = None  # the digest the image's tag named before this push
        try:
            await self._await_turn(record)
            builder = self.builders.update(
                record.options.builder_id, lambda r: setattr(r, "last_used_at", utcnow())
            )
            await self._set_status(build_id, BuildStatus.BUILDING, started=True)

            async def pushing() -> None:
                nonlocal pushed, prior
                pushed, prior = True, self._tag_digest(record)
                await self._set_status(build_id, BuildStatus.PUSHING)

            async with asyncio.timeout(record.options.timeout_seconds):
                inputs = await self._inputs(record)
                result = await run_build(self._tools(build_id, released), record, builder,
                                         inputs, pushing=pushing)  # fmt: skip
                name = f"{self.settings.registry_host}/{self._push_ref(record)}"
                await self.images.wait_ready(name, IMAGE_READY_SECONDS)
            image = self.images.get(name)
            if image.status != ImageStatus.READY or image.digest != result.image_digest:
                raise BuildFailed(f"the pushed image did not convert: {image.error}")

            def done(r: BuildRecord) -> None:
                r.image_ref, r.image_digest = name, result.image_digest
                r.provenance = Provenance(
                    source_hash=r.provenance.source_hash if r.provenance else None,
                    base_image_digest=self._base_digest(result.image_digest),
                    builder_version=result.builder_version,
                    timestamp=utcnow(),
                )

            self.builds.update(build_id, done)
            await self._finish(build_id, BuildStatus.READY)
        except (asyncio.CancelledError, Exception) as exc:  # cancel, timeout, failure
            status, error = _ending(exc, record)
            await self._finish(build_id, status, error=error,
                               undo_push=(prior,) if pushed else None)  # fmt: skip
        finally:
            # The builder VM goes after the build's end (`ready` waits for no VM to die),
            # and after the builder's next build may start, unless it holds the cache disk.
            if released.is_set():
                self._leave(record)
            await self._delete_builder_vm(build_id)
            self._leave(record)
            self._tasks.pop(build_id, None)
            self._secrets.pop(build_id, None)

    def _push_ref(self, record: BuildRecord) -> str:
        return record.options.image_name

    async def _inputs(self, record: BuildRecord) -> Inputs:
        dockerfile = record.options.dockerfile
        if record.language is not None and record.generated_dockerfile is not None:
            base = await self._debian_image(BASES[record.language])
            dockerfile = record.generated_dockerfile.format(base=base)
            await self.events.log(record.id, f"no Dockerfile: building a {record.language} app "
                                  f"on {base} with the Dockerfile Ember wrote:")  # fmt: skip
            for line in dockerfile.splitlines():
                await self.events.log(record.id, f"  {line}")
        return Inputs(
            source=self.settings.root / record.id / "source.tar.gz",
            dockerfile=dockerfile,
            secrets=self._secrets.get(record.id, {}),
            push_ref=self._push_ref(record),
        )

    def _tools(self, build_id: str, released: asyncio.Event) -> BuildTools:
        assert self.settings.relay is not None

        async def log_line(line: str) -> None:
            await self.events.log(build_id, line)

        def on_instance(instance_id: str) -> None:
            self.builds.update(build_id, lambda r: setattr(r, "builder_instance_id", instance_id))

        return BuildTools(
            instances=self.instances, templates=self.templates,
            relay=self.settings.relay, own_hosts=self.settings.own_hosts,
            mint_token=self._mint_token, log=log_line, on_instance=on_instance,
            on_cache_released=released.set, versions=self._versions,
        )  # fmt: skip

    async def _set_status(
        self, build_id: str, status: BuildStatus, *, started: bool = False
    ) -> None:
        def change(r: BuildRecord) -> None:
            r.status = status
            if started:
                r.started_at = utcnow()

        self.builds.update(build_id, change)
        await self.events.status(build_id, status)

    async def _finish(
        self, build_id: str, status: BuildStatus, *, error: str | None = None,
        undo_push: tuple[str | None] | None = None,
    ) -> None:  # fmt: skip
        """The end of a build; a cancelled or failed push leaves no image behind
        (`undo_push`: the digest the tag named before the push, if one was under way)."""
        record = self.get(build_id)
        if undo_push is not None:
            self._undo_push(record, undo_push[0])

        def end(r: BuildRecord) -> None:
            r.status, r.error, r.completed_at = status, error, utcnow()
            if r.started_at is None:
                r.started_at = r.completed_at

        self.builds.update(build_id, end)
        if error is not None:
            await self.events.log(build_id, f"error: {error}")
        await self.events.append(build_id, BuildEvent(type="status", status=status))

    async def _delete_builder_vm(self, build_id: str) -> None:
        """By name: also a VM cut short inside its clone, before its id was known."""
        for instance in self.instances.find():
            if instance.name == f"build-{build_id}":
                with contextlib.suppress(EmberError):
                    await self.instances.delete(instance.id)

    def _base_digest(self, manifest_digest: str) -> str | None:
        """The base image's digest buildah wrote into the pushed manifest's annotations."""
        try:
            manifest = json.loads(self.registry.storage.blobs.path(manifest_digest).read_bytes())
        except (OSError, ValueError, DistributionError):
            return None
        base = (manifest.get("annotations") or {}).get(BASE_ANNOTATION)
        return base if isinstance(base, str) and base.startswith("sha256:") else None

    def _tag_digest(self, record: BuildRecord) -> str | None:
        repository, _, tag = self._push_ref(record).rpartition(":")
        try:
            return self.registry.storage.manifest_digest(repository, tag)
        except DistributionError:
            return None

    def _undo_push(self, record: BuildRecord, prior: str | None) -> None:
        """Put the image name back as it was before the push: gone if it was new, else
        the tag pointed at its previous manifest again."""
        if self._tag_digest(record) == prior:
            return  # the push never reached its manifest
        repository, _, tag = self._push_ref(record).rpartition(":")
        host = self.settings.registry_host
        with contextlib.suppress(EmberError):
            if prior is None:
                self.images.delete(f"{host}/{repository}:{tag}")
                self.registry.delete_manifest(repository, tag)
            else:
                _, media_type = self.registry.storage.resolve(repository, prior)
                body = self.registry.storage.blobs.path(prior).read_bytes()
                self.registry.push_manifest(host, repository, tag, body, media_type)


def _ending(exc: BaseException, record: BuildRecord) -> tuple[BuildStatus, str]:
    """How a build that did not get to `ready` ends, and why."""
    if isinstance(exc, asyncio.CancelledError):
        return BuildStatus.CANCELLED, "cancelled"
    if isinstance(exc, TimeoutError):
        return BuildStatus.FAILED, f"timed out after {record.options.timeout_seconds} s"
    if isinstance(exc, EmberError):
        return BuildStatus.FAILED, exc.message
    log.exception("build failed", extra={"build": record.id}, exc_info=exc)
    return BuildStatus.FAILED, str(exc)


async def _receive(chunks: AsyncIterable[bytes], path: Path) -> str:
    """Write the uploaded source; its sha256 is the build's source hash."""
    sha = hashlib.sha256()
    with path.open("wb") as f:
        async for chunk in chunks:
            sha.update(chunk)
            f.write(chunk)
    if sha.digest() == hashlib.sha256(b"").digest():
        raise InvalidArgument("the source archive is empty", code="invalid_source")
    return f"sha256:{sha.hexdigest()}"
