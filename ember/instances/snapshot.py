"""Named snapshots: capture an instance into `<data_dir>/snapshots/<id>`, restore one
into its instance, delete, compress in the background.

Kinds, as in Hypeman: **Standby** (memory + disks) from a Running, Paused or
Standby instance; a running VM is paused, its device state saved (its RAM
stays in its memory file), the memory file and disks copied sparsely while
it is paused, then it resumes. **Stopped** (disks only) from a Stopped
instance. Instances with read-write volumes are refused: the volume is not
the instance's to copy, and a restore could not give it back as it was.

Nothing half-made: every file is written under a temporary name, the record
is inserted once all files are there, and a failed capture removes the
snapshot's directory (a VM paused for it is resumed). Files without a record
(a server killed mid-capture) are removed at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ember.errors import EmberError, InvalidArgument, InvalidState, Unavailable
from ember.ids import new_id
from ember.instances import restore as restoring
from ember.instances.boot import boot
from ember.instances.core import InstanceCore, invalid
from ember.instances.guestnet import restore_own_network
from ember.instances.layout import InstanceLayout
from ember.instances.models import InstanceRecord, StandbySnapshot
from ember.instances.standby import choose_compression
from ember.instances.state import State, can_transition
from ember.network import NetworkManager
from ember.snapshots.compression import (
    Algorithm,
    BackgroundJobs,
    Compression,
    CompressionConfig,
    CompressionState,
    allocated_bytes,
    compress_recorded,
)
from ember.snapshots.files import copy_payload, copy_sparse, tree_bytes
from ember.snapshots.layout import SnapshotFiles, SnapshotLayout
from ember.snapshots.models import (
    NetworkCopy,
    SavedMemory,
    SnapshotKind,
    SnapshotRecord,
    VolumeCopy,
)
from ember.snapshots.store import SnapshotStore
from ember.units import format_size
from ember.validation import validate_name, validate_tags
from ember.volumes import Attachment, VolumeManager
from ember.volumes.mounts import overlay_disk_path

log = logging.getLogger("ember.snapshots")
TargetState = State  # Running, Standby or Stopped


@dataclass(frozen=True, slots=True)
class SavedFiles:
    """Where a saved VM's files are, in a snapshot or in an instance's layout."""

    overlay: Path
    config: Path
    volume_disks: dict[str, Path]  # by file name
    memory: SavedMemory | None = None
    vmstate: Path | None = None
    payload: Path | None = None  # the raw memory payload (RAM file, or the stream)
    compressed: Path | None = None  # the payload compressed, when it is

    @property
    def algorithm(self) -> Algorithm | None:
        compression = self.memory.compression if self.memory else None
        return compression.algorithm if compression else None


def snapshot_files(snapshot: SnapshotRecord, files: SnapshotFiles) -> SavedFiles:
    disks = {v.overlay_disk: files.volume_disk(v.overlay_disk) for v in snapshot.volumes
             if v.overlay_disk}  # fmt: skip
    memory = snapshot.memory
    if memory is None:
        return SavedFiles(files.overlay, files.config, disks)
    payload = files.payload(memory.memory_in_file)
    algorithm = memory.compression.algorithm if memory.compression else None
    compressed = files.compressed(payload, algorithm) if algorithm else None
    return SavedFiles(files.overlay, files.config, disks, memory, files.vmstate, payload,
                      compressed)  # fmt: skip


def instance_files(
    record: InstanceRecord, paths: InstanceLayout, attachments: list[Attachment]
) -> SavedFiles:
    """The files of an instance; with its standby's memory when it is in Standby."""
    disks = {p.name: p for p in (overlay_disk_path(paths.dir, a) for a in attachments
             if a.overlay) if p.exists()}  # fmt: skip
    saved = record.standby
    if record.state != State.STANDBY or saved is None:
        return SavedFiles(paths.overlay, paths.config, disks)
    memory = saved.model_copy(deep=True)
    payload = paths.standby_payload(saved.memory_in_file)
    algorithm = saved.compression.algorithm if saved.compression else None
    compressed = paths.compressed(payload, algorithm) if algorithm else None
    return SavedFiles(paths.overlay, paths.config, disks, memory, paths.standby_state, payload,
                      compressed)  # fmt: skip


async def copy_disks(src: SavedFiles, overlay: Path, config: Path, volumes: Path) -> None:
    """The overlay, config and volume-overlay disks of `src` into place (volume disks into
    the directory `volumes`)."""
    await copy_sparse(src.overlay, overlay)
    if src.config.exists():  # an instance that never booted has none yet
        await copy_sparse(src.config, config)
    for name, disk in src.volume_disks.items():
        await copy_sparse(disk, volumes / name)


async def copy_memory(src: SavedFiles, vmstate: Path, payload_dst: Path) -> SavedMemory:
    """The saved VM of `src` as raw files (decompressed if need be); its metadata, reset to
    uncompressed."""
    assert src.memory is not None and src.vmstate is not None and src.payload is not None
    if src.payload != src.vmstate:
        await copy_sparse(src.vmstate, vmstate)
    await copy_payload(src.payload, src.compressed, src.algorithm, payload_dst)
    return src.memory.with_compression("none", None)


def as_standby(memory: SavedMemory) -> StandbySnapshot:
    """A snapshot's saved VM as an instance's own standby (a copy: the two records change
    apart)."""
    return memory.model_copy(deep=True)


def default_target(kind: SnapshotKind) -> State:
    return State.RUNNING if kind == "Standby" else State.STOPPED


def check_target(kind: SnapshotKind, target: State) -> None:
    if target not in (State.RUNNING, State.STANDBY, State.STOPPED):
        raise InvalidArgument("target_state: one of Running, Standby, Stopped")
    if kind == "Stopped" and target == State.STANDBY:
        raise InvalidArgument("target_state: a Stopped snapshot has no memory to be in Standby")


def check_hypervisor(kind: SnapshotKind, source: str, wanted: str | None) -> None:
    if wanted is not None and wanted != source and kind == "Standby":
        raise InvalidArgument(
            f"target_hypervisor: a Standby snapshot restores on its own hypervisor ({source})"
        )


@dataclass
class Snapshots:
    """Named snapshots of this server's instances (the manager's `snapshots`)."""

    core: InstanceCore
    store: SnapshotStore
    layout: SnapshotLayout
    instance_jobs: BackgroundJobs  # the instances' standby compressions
    volumes: VolumeManager
    network: NetworkManager | None
    jobs: BackgroundJobs = field(default_factory=BackgroundJobs)  # by snapshot id
    # Held while a snapshot's files are read, and by its compression's last step (which
    # removes the raw payload).
    file_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def files_lock(self, snapshot_id: str) -> asyncio.Lock:
        return self.file_locks.setdefault(snapshot_id, asyncio.Lock())

    # ---- queries -----------------------------------------------------------------------

    def get(self, ref: str, instance_id: str | None = None) -> SnapshotRecord:
        """By id, name or unique id prefix (`SnapshotStore.resolve`)."""
        return self.store.resolve(ref, instance_id)

    def attachments(self, record: InstanceRecord) -> list[Attachment]:
        return self.volumes.attachments_of(record.id)

    # ---- create ------------------------------------------------------------------------

    async def create(
        self,
        instance_id: str,
        kind: SnapshotKind,
        *,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        compression: CompressionConfig | None = None,
        scheduled: bool = False,
    ) -> SnapshotRecord:
        async with self.core.lock(instance_id):
            return await self.create_locked(
                instance_id, kind, name=name, tags=tags, compression=compression,
                scheduled=scheduled,
            )  # fmt: skip

    async def create_locked(
        self,
        instance_id: str,
        kind: SnapshotKind,
        *,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        compression: CompressionConfig | None = None,
        scheduled: bool = False,
    ) -> SnapshotRecord:
        core = self.core
        record = core.current(instance_id)
        if name is not None:
            validate_name(name)
            if self.store.name_taken(record.id, name):
                raise InvalidState(
                    f"snapshot {name!r} already exists for instance {record.name!r}",
                    code="already_exists",
                )
        tags = validate_tags(tags)
        attachments = self.capturable(record)
        self.check_kind(record, kind)
        chosen, _ = choose_compression(core, record, compression, "0s")
        snapshot_id = new_id()
        files = self.layout.of(snapshot_id)
        files.dir.mkdir(parents=True)
        try:
            memory = await self.capture(record, kind, attachments, files)
            snapshot = SnapshotRecord(
                id=snapshot_id, name=name, kind=kind, tags=tags, source_instance_id=record.id,
                source_instance_name=record.name, source_hypervisor=record.hypervisor,
                size_bytes=tree_bytes(files.dir), memory=memory,
                volumes=[_volume_copy(a, core.paths(record.id)) for a in attachments],
                network=self._network_of(record),
                source=record.model_dump(mode="json", exclude={"standby"}),
                scheduled=scheduled,
            )  # fmt: skip
            self.store.insert(snapshot)
        except BaseException:
            shutil.rmtree(files.dir, ignore_errors=True)
            raise
        core.event(record.id, f"snapshot {snapshot_id} ({kind}) taken: "
                              f"{format_size(snapshot.size_bytes)}")  # fmt: skip
        if chosen is not None and memory is not None:
            self.start_compression(snapshot, chosen)
        return snapshot

    def capturable(self, record: InstanceRecord) -> list[Attachment]:
        """The instance's volume attachments, all read-only; refuses read-write ones."""
        attachments = self.attachments(record)
        writable = [
            f"{self.volumes.get(a.volume_id).name!r} at {a.mount_path}"
            for a in attachments
            if not a.readonly
        ]
        if writable:
            raise InvalidState(
                f"instance {record.name!r} has read-write volume {', '.join(writable)}: a "
                "snapshot or fork cannot capture a volume (it outlives the instance and is "
                "not copied); stop the instance and detach the volume, or attach it read-only",
                code="volumes_not_supported",
            )
        return attachments

    def check_kind(self, record: InstanceRecord, kind: SnapshotKind) -> None:
        if kind == "Stopped" and record.state != State.STOPPED:
            raise invalid(record, "take a Stopped snapshot of", "stop it first (or take Standby)")
        if kind == "Standby":
            if record.state not in (State.RUNNING, State.PAUSED, State.STANDBY):
                raise invalid(
                    record, "take a Standby snapshot of", "it has no running VM or saved memory"
                )
            if not self.core.hypervisor(record).capabilities.snapshot:
                raise InvalidState(f"the {record.hypervisor} hypervisor cannot save memory")

    async def capture(
        self,
        record: InstanceRecord,
        kind: SnapshotKind,
        attachments: list[Attachment],
        files: SnapshotFiles,
    ) -> SavedMemory | None:
        """The instance's files into `files` (its lock is held); the saved memory's
        metadata for a Standby snapshot."""
        paths = self.core.paths(record.id)
        source = instance_files(record, paths, attachments)
        volumes_dir = files.dir / "volumes"
        if kind == "Stopped":
            await copy_disks(source, files.overlay, files.config, volumes_dir)
            return None
        if record.state == State.STANDBY:
            await self.instance_jobs.cancel(record.id)  # its raw payload must stay put
            source = instance_files(self.core.current(record.id), paths, attachments)
            assert source.memory is not None
            await copy_disks(source, files.overlay, files.config, volumes_dir)
            return await copy_memory(source, files.vmstate,
                                     files.payload(source.memory.memory_in_file))  # fmt: skip
        return await self._capture_running(record, source, files)

    async def _capture_running(
        self, record: InstanceRecord, source: SavedFiles, files: SnapshotFiles
    ) -> SavedMemory:
        """Pause and save the VM, copy its RAM file and disks while it is paused, resume."""
        core = self.core
        paths = core.paths(record.id)
        hypervisor = core.hypervisor(record)
        handle = paths.handle(record.pid or 0)
        memory_in_file = paths.memory.exists()
        system = core.system()
        core.event(record.id, "snapshot: pausing the VM to save and copy it")
        try:
            saved = await hypervisor.save(handle, files.vmstate, memory_file=memory_in_file)
            if memory_in_file:
                await copy_sparse(paths.memory, files.memory)
            await copy_disks(source, files.overlay, files.config, files.dir / "volumes")
        finally:
            if record.state == State.RUNNING:
                try:
                    await hypervisor.resume(handle)
                except (EmberError, OSError) as exc:
                    core.event(record.id, f"snapshot: cannot resume the VM: {exc}")
                    raise Unavailable(f"the VM did not resume after the snapshot: {exc}") from exc
        core.event(record.id, "snapshot: VM resumed")
        return SavedMemory(
            memory_in_file=memory_in_file,
            state_bytes=saved.bytes,
            memory_bytes=allocated_bytes(files.payload(memory_in_file)),
            kernel=str(system.kernel),
            initrd=str(system.initrd),
            cmdline=system.cmdline,
        )

    def _network_of(self, record: InstanceRecord) -> NetworkCopy | None:
        lease = self.network.lease(record.id) if self.network is not None else None
        if lease is None:
            return None
        return NetworkCopy(download_bps=lease.download_rate, upload_bps=lease.upload_rate)

    # ---- compression -------------------------------------------------------------------

    def start_compression(self, snapshot: SnapshotRecord, compression: Compression) -> None:
        async def job(cancel: threading.Event) -> None:
            await self._compress(snapshot.id, compression, cancel)

        self.jobs.start(snapshot.id, job)

    async def _compress(
        self, snapshot_id: str, compression: Compression, cancel: threading.Event
    ) -> None:
        snapshot = self.store.get(snapshot_id)
        assert snapshot.memory is not None
        files = self.layout.of(snapshot_id)
        raw = files.payload(snapshot.memory.memory_in_file)
        target = files.compressed(raw, compression.algorithm)

        def record(
            state: CompressionState, config: CompressionConfig | None, size: int | None,
            error: str | None,
        ) -> None:  # fmt: skip
            self._set_compression(snapshot_id, state, config, size=size, error=error)

        what = f"snapshot {snapshot_id}"
        size = await compress_recorded(raw, target, compression, cancel, record, what)
        if size is None:
            return
        async with self.files_lock(snapshot_id):  # no copy is reading the raw payload
            self._set_compression(snapshot_id, "compressed", compression.config, size=size)
            raw.unlink(missing_ok=True)
            self._set_size(snapshot_id)

    def _set_compression(
        self,
        snapshot_id: str,
        state: CompressionState,
        config: CompressionConfig | None,
        *,
        size: int | None = None,
        error: str | None = None,
    ) -> None:
        snapshot = self.store.get(snapshot_id)
        if snapshot.memory is None:
            return
        snapshot.memory = snapshot.memory.with_compression(state, config, size=size, error=error)
        self.store.update(snapshot_id, snapshot)

    def _set_size(self, snapshot_id: str) -> None:
        snapshot = self.store.get(snapshot_id)
        snapshot.size_bytes = tree_bytes(self.layout.of(snapshot_id).dir)
        self.store.update(snapshot_id, snapshot)

    # ---- delete ------------------------------------------------------------------------

    async def delete(self, ref: str) -> None:
        """The record first, then the files (a server killed between leaves files without
        a record, which `recover` removes)."""
        snapshot_id = self.get(ref).id  # 404
        await self.jobs.cancel(snapshot_id)
        async with self.files_lock(snapshot_id):  # a fork or restore copying from it
            self.store.delete(snapshot_id)
            await asyncio.to_thread(shutil.rmtree, self.layout.of(snapshot_id).dir, True)
        self.file_locks.pop(snapshot_id, None)

    # ---- restore into its instance -----------------------------------------------------

    async def restore(
        self,
        instance_id: str,
        snapshot_ref: str,
        *,
        target_state: State | None = None,
        target_hypervisor: str | None = None,
    ) -> InstanceRecord:
        snapshot = self.get(snapshot_ref, instance_id)
        target = target_state or default_target(snapshot.kind)
        check_target(snapshot.kind, target)
        check_hypervisor(snapshot.kind, snapshot.source_hypervisor, target_hypervisor)
        core = self.core
        async with core.lock(instance_id):
            record = core.current(instance_id)
            self._check_restore(record, snapshot, target)
            await self.instance_jobs.cancel(record.id)  # the old standby is replaced
            paths = core.paths(record.id)
            async with self.files_lock(snapshot.id):
                source = snapshot_files(snapshot, self.layout.of(snapshot.id))
                await copy_disks(source, paths.overlay, paths.config, paths.dir)
                _drop_standby_files(paths)
                memory = None
                if snapshot.memory is not None and target != State.STOPPED:
                    payload = paths.standby_payload(snapshot.memory.memory_in_file)
                    paths.standby.mkdir(parents=True, exist_ok=True)
                    memory = await copy_memory(source, paths.standby_state, payload)
            core.event(record.id, f"snapshot {snapshot.id} ({snapshot.kind}) copied back")
            return await self._settle(record, memory, target)

    def _check_restore(self, record: InstanceRecord, snapshot: SnapshotRecord,
                       target: State) -> None:  # fmt: skip
        if snapshot.source_instance_id != record.id:
            raise InvalidArgument(
                f"snapshot {snapshot.id} was taken of instance {snapshot.source_instance_name!r}"
                f", not {record.name!r}: fork it into a new instance instead"
            )
        if record.state not in (State.STOPPED, State.STANDBY):
            raise invalid(record, "restore a snapshot into",
                          "only a Stopped or Standby instance can be (stop it first)")  # fmt: skip
        if target == State.STANDBY and not can_transition(record.state, State.STANDBY):
            raise invalid(record, "restore a snapshot with target_state Standby into",
                          "restore it to Running and put it in standby instead")  # fmt: skip
        self.capturable(record)
        wanted = sorted((v.volume_id, v.mount_path) for v in snapshot.volumes)
        held = sorted((a.volume_id, a.mount_path) for a in self.attachments(record))
        if snapshot.kind == "Standby" and target != State.STOPPED and wanted != held:
            raise InvalidState(
                f"instance {record.name!r} mounts other volumes than when snapshot "
                f"{snapshot.id} was taken: its saved VM needs the same disks"
            )

    async def _settle(
        self, record: InstanceRecord, memory: SavedMemory | None, target: State
    ) -> InstanceRecord:
        """Bring the instance, its files in place, to `target` (its lock is held)."""
        core = self.core
        if memory is not None:
            standby = as_standby(memory)
            if record.state == State.STOPPED and target == State.RUNNING:
                return await restoring.restore_into_stopped(core, record.id, standby)
            if record.state == State.STANDBY:
                core.update(record.id, lambda r: setattr(r, "standby", standby))
            else:  # checked in _check_restore: the state machine allows the hop
                core.transition(record.id, State.STANDBY, "restored from a snapshot",
                                standby=standby)  # fmt: skip
            if target == State.RUNNING:
                return await restore_own_network(core, self.instance_jobs, self.network,
                                                 record.id)  # fmt: skip
            return core.current(record.id)
        if record.state == State.STANDBY:  # its saved VM is gone with the old files
            core.transition(record.id, State.STOPPED, "restored from a snapshot (disks)",
                            standby=None)  # fmt: skip
        if target == State.RUNNING:
            return await boot(core, core.current(record.id))
        return core.current(record.id)

    # ---- server start ------------------------------------------------------------------

    def recover(self) -> None:
        """Files without a record go (a capture cut short); a compression cut short leaves
        the raw payload and says so; one that finished loses its raw payload now."""
        known = self.store.ids()
        for orphan in self.layout.ids_on_disk() - known:
            shutil.rmtree(self.layout.of(orphan).dir, ignore_errors=True)
        for snapshot in self.store.find():
            files = self.layout.of(snapshot.id)
            for partial in files.dir.rglob("*.partial"):
                partial.unlink(missing_ok=True)
            memory = snapshot.memory
            if memory is None:
                continue
            if memory.compression_state == "compressing":
                self._set_compression(snapshot.id, "none", None)
            elif memory.compression_state == "compressed" and memory.compression is not None:
                raw = files.payload(memory.memory_in_file)
                if files.compressed(raw, memory.compression.algorithm or "zstd").exists():
                    raw.unlink(missing_ok=True)

    async def close(self) -> None:
        await self.jobs.close()


def _volume_copy(attachment: Attachment, paths: InstanceLayout) -> VolumeCopy:
    disk = overlay_disk_path(paths.dir, attachment) if attachment.overlay else None
    return VolumeCopy(
        volume_id=attachment.volume_id,
        mount_path=attachment.mount_path,
        overlay_size_bytes=attachment.overlay_size_bytes,
        overlay_disk=disk.name if disk is not None and disk.exists() else None,
    )


def _drop_standby_files(paths: InstanceLayout) -> None:
    shutil.rmtree(paths.standby, ignore_errors=True)
    paths.memory.unlink(missing_ok=True)
