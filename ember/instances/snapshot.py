"""Named snapshots: stored copies of a saved VM (kind Standby) or of the disks only
(kind Stopped) in `<data_dir>/snapshots/<id>`, laid out as an instance's directory
(`SavedVMFiles`).

Kinds, as in Hypeman: **Standby** from a Running, Paused or Standby instance;
a running VM is captured with pause-copy-resume (`saved.capture`: its RAM file
and disks copied while it is paused), a Standby one has its saved VM placed
(`saved.place`). **Stopped** from a Stopped instance. Instances with
read-write volumes are refused: the volume is not the instance's to copy, and
a restore could not give it back as it was.

Restore into its instance: place the snapshot's files over the instance's;
with a saved VM it is then in Standby, and Running goes through the one
`saved.restore`. Nothing half-made: every file is written under a temporary
name, the record is inserted once all files are there, and a failed capture
removes the snapshot's directory. Files without a record (a server killed
mid-capture) are removed at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from ember.errors import Conflict, InvalidArgument, InvalidState
from ember.ids import new_id
from ember.instances.boot import boot
from ember.instances.core import InstanceCore, invalid
from ember.instances.layout import InstanceLayout
from ember.instances.models import InstanceRecord
from ember.instances.saved.capture import capture_saved_vm
from ember.instances.saved.compress import SavedSlot, recover_saved, start_compression
from ember.instances.saved.place import copy_disks, place_saved_vm
from ember.instances.saved.restore import restore
from ember.instances.saved.slots import cancel_instance_jobs, instance_slot
from ember.instances.standby import choose_compression
from ember.instances.state import State, can_transition
from ember.network import NetworkManager
from ember.snapshots.compression import CompressionConfig
from ember.snapshots.files import copy_sparse, tree_bytes
from ember.snapshots.layout import SavedVMFiles, SnapshotLayout
from ember.snapshots.models import (
    NetworkCopy,
    SavedVM,
    ScheduleRecord,
    SnapshotKind,
    SnapshotRecord,
    VolumeCopy,
)
from ember.snapshots.store import SnapshotStore
from ember.tasks import BackgroundJobs
from ember.units import format_size
from ember.validation import validate_name, validate_tags
from ember.volumes import Attachment, VolumeManager
from ember.volumes.mounts import overlay_disk_path

__all__ = ["Snapshots", "check_hypervisor", "check_target", "default_target", "volume_copy"]

log = logging.getLogger("ember.snapshots")


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
    jobs: BackgroundJobs  # compressions (`saved:<instance>`, `snapshot:<id>`), clock jobs
    volumes: VolumeManager
    network: NetworkManager | None
    # Held while a snapshot's files are read, and by its compression's last step (which
    # removes the raw payload).
    file_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    # ---- queries -----------------------------------------------------------------------

    def get(self, ref: str, instance_id: str | None = None) -> SnapshotRecord:
        """By id, name or unique id prefix (`SnapshotStore.resolve`)."""
        return self.store.resolve(ref, instance_id)

    def slot(self, snapshot_id: str) -> SavedSlot:
        """A snapshot's saved VM as a `SavedSlot` (its compression and recovery)."""
        files = self.layout.of(snapshot_id)

        def read() -> SavedVM | None:
            return self.store.get(snapshot_id).memory

        def change(edit: Callable[[SavedVM], SavedVM]) -> None:
            snapshot = self.store.get(snapshot_id)
            if snapshot.memory is not None:
                snapshot.memory = edit(snapshot.memory)
                snapshot.size_bytes = tree_bytes(files.dir)
                self.store.update(snapshot_id, snapshot)

        lock = self.file_locks.setdefault(snapshot_id, asyncio.Lock())
        return SavedSlot(f"snapshot:{snapshot_id}", files, lock, read, change,
                         lambda m: log.info("snapshot %s: %s", snapshot_id, m))  # fmt: skip

    def network_of(self, record: InstanceRecord) -> NetworkCopy | None:
        """The limits of the instance's network lease, kept so a fork gets the same."""
        lease = self.network.lease(record.id) if self.network is not None else None
        if lease is None:
            return None
        return NetworkCopy(download_bps=lease.download_rate, upload_bps=lease.upload_rate)

    def capturable(self, record: InstanceRecord) -> list[Attachment]:
        """The instance's volume attachments, all read-only; refuses read-write ones."""
        attachments = self.volumes.attachments_of(record.id)
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
        template: bool = False,
        workload_stopped: bool = False,
    ) -> SnapshotRecord:
        """`workload_stopped`: the caller stopped the workload before (a template)."""
        core = self.core
        async with core.lock(instance_id):
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
            self._check_kind(record, kind)
            chosen, _ = choose_compression(core, record, compression, "0s")
            snapshot_id = new_id()
            files = self.layout.of(snapshot_id)
            files.dir.mkdir(parents=True)
            volumes = [volume_copy(a, core.paths(record.id)) for a in attachments]
            try:
                memory = await self._capture(record, kind, volumes, files)
                if memory is not None:
                    memory.workload_stopped = workload_stopped
                snapshot = SnapshotRecord(
                    id=snapshot_id, name=name, kind=kind, tags=tags,
                    source_instance_id=record.id, source_instance_name=record.name,
                    source_hypervisor=record.hypervisor, size_bytes=tree_bytes(files.dir),
                    memory=memory, volumes=volumes, network=self.network_of(record),
                    source=record.model_dump(mode="json", exclude={"standby"}),
                    scheduled=scheduled, template=template,
                )  # fmt: skip
                self.store.insert(snapshot)
            except BaseException:
                shutil.rmtree(files.dir, ignore_errors=True)
                raise
        core.event(record.id, f"snapshot {snapshot_id} ({kind}) taken: "
                              f"{format_size(snapshot.size_bytes)}")  # fmt: skip
        # The RAM file of a VM booted for sharing is what its forks map: kept raw.
        shared = record.shareable_memory and memory is not None and memory.memory_in_file
        if chosen is not None and memory is not None and not shared:
            start_compression(self.jobs, self.slot(snapshot_id), chosen)
        return snapshot

    async def take_scheduled(self, schedule: ScheduleRecord, name: str) -> SnapshotRecord:
        """As Hypeman: Standby from a Running or Standby instance, Stopped from a Stopped one."""
        record = self.core.current(schedule.instance_id)
        kind: SnapshotKind = "Stopped" if record.state == State.STOPPED else "Standby"
        return await self.create(record.id, kind, name=name, tags=schedule.metadata, scheduled=True)

    def _check_kind(self, record: InstanceRecord, kind: SnapshotKind) -> None:
        if kind == "Stopped" and record.state != State.STOPPED:
            raise invalid(record, "take a Stopped snapshot of", "stop it first (or take Standby)")
        if kind == "Standby":
            if record.state not in (State.RUNNING, State.PAUSED, State.STANDBY):
                raise invalid(
                    record, "take a Standby snapshot of", "it has no running VM or saved memory"
                )
            if not self.core.hypervisor(record).capabilities.snapshot:
                raise InvalidState(f"the {record.hypervisor} hypervisor cannot save memory")

    async def _capture(
        self, record: InstanceRecord, kind: SnapshotKind, volumes: list[VolumeCopy],
        files: SavedVMFiles,
    ) -> SavedVM | None:  # fmt: skip
        """The instance's files into `files` (its lock is held); the saved VM's record for
        a Standby snapshot."""
        paths = self.core.paths(record.id)
        disks = [v.overlay_disk for v in volumes if v.overlay_disk]
        if kind == "Stopped":
            await place_saved_vm(paths, None, disks, files)
            return None
        if record.state == State.STANDBY:
            return await place_saved_vm(paths, record.standby, disks, files)

        async def copy_while_paused(memory_in_file: bool) -> None:
            if memory_in_file:
                await copy_sparse(paths.memory, files.memory)
            await copy_disks(paths, files, disks)

        return await capture_saved_vm(self.core, record, files, while_paused=copy_while_paused,
                                      resume=True)  # fmt: skip

    # ---- delete ------------------------------------------------------------------------

    def dependents(self, snapshot_id: str) -> list[str]:
        """What maps this snapshot's RAM file copy-on-write (forks and clones made while it
        was shared, and snapshots of them): it must stay while they do. A fork that was
        given its own copy, or has stopped, does not count."""
        base = str(self.layout.of(snapshot_id).memory)

        def maps(saved: SavedVM | None) -> bool:
            return saved is not None and saved.memory_base == base

        found = [
            f"instance {r.name!r}"
            for r in self.core.repo.all()
            if (r.memory_base == base and r.state != State.STOPPED) or maps(r.standby)
        ]
        return found + [f"snapshot {s.name or s.id!r}" for s in self.store.find() if maps(s.memory)]

    async def delete(self, ref: str) -> None:
        """The record first, then the files (a server killed between leaves files without
        a record, which `recover` removes). Refused (409 `in_use`) while VMs map its RAM."""
        snapshot = self.get(ref)  # 404
        snapshot_id = snapshot.id
        slot = self.slot(snapshot_id)
        await self.jobs.cancel(slot.key)
        async with slot.lock:  # a fork or restore copying from it
            using = self.dependents(snapshot_id)
            if using:
                what = "template" if snapshot.template else "snapshot"
                raise Conflict(
                    f"{what} {snapshot.name or snapshot_id!r} is in use: {', '.join(using)} "
                    "map its memory copy-on-write; delete or stop them first",
                    code="in_use",
                )
            self.store.delete(snapshot_id)
            await asyncio.to_thread(shutil.rmtree, slot.files.dir, True)
        self.file_locks.pop(snapshot_id, None)

    # ---- restore into its instance -----------------------------------------------------

    async def restore_into(
        self,
        instance_id: str,
        snapshot_ref: str,
        *,
        target_state: State | None = None,
        target_hypervisor: str | None = None,
    ) -> InstanceRecord:
        """Place the snapshot over its instance's files (Standby with a saved VM, else
        Stopped), then restore, boot or stay, as `target_state` says."""
        snapshot = self.get(snapshot_ref, instance_id)
        target = target_state or default_target(snapshot.kind)
        check_target(snapshot.kind, target)
        check_hypervisor(snapshot.kind, snapshot.source_hypervisor, target_hypervisor)
        core = self.core
        async with core.lock(instance_id):
            record = core.current(instance_id)
            self._check_restore(record, snapshot, target)
            await cancel_instance_jobs(self.jobs, record.id)  # the old saved VM is replaced
            memory = snapshot.memory if target != State.STOPPED else None
            slot = self.slot(snapshot.id)
            async with slot.lock:
                disks = [v.overlay_disk for v in snapshot.volumes if v.overlay_disk]
                saved = await place_saved_vm(slot.files, memory, disks, core.paths(record.id))
            core.event(record.id, f"snapshot {snapshot.id} ({snapshot.kind}) placed")
            record = self._record_placed(record, saved)
            if target == State.RUNNING and saved is None:
                return await boot(core, record)
        if target == State.RUNNING:
            return await restore(core, self.jobs, self.network, instance_id)
        return core.current(instance_id)

    def _record_placed(self, record: InstanceRecord, saved: SavedVM | None) -> InstanceRecord:
        """The instance's state once a snapshot's files are in place: Standby holding the
        placed saved VM, or Stopped with disks only."""
        core = self.core
        if saved is not None:
            if record.state == State.STANDBY:
                return core.update(record.id, lambda r: setattr(r, "standby", saved))
            return core.transition(record.id, State.STANDBY, "a snapshot placed", standby=saved)
        if record.state == State.STANDBY:
            return core.transition(record.id, State.STOPPED, "a snapshot's disks placed",
                                   standby=None)  # fmt: skip
        return record

    def _check_restore(
        self, record: InstanceRecord, snapshot: SnapshotRecord, target: State
    ) -> None:
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
        attachments = self.capturable(record)
        wanted = sorted((v.volume_id, v.mount_path) for v in snapshot.volumes)
        held = sorted((a.volume_id, a.mount_path) for a in attachments)
        if snapshot.kind == "Standby" and target != State.STOPPED and wanted != held:
            raise InvalidState(
                f"instance {record.name!r} mounts other volumes than when snapshot "
                f"{snapshot.id} was taken: its saved VM needs the same disks"
            )

    # ---- server start ------------------------------------------------------------------

    def recover(self) -> None:
        """Files without a record go (a capture cut short); every saved VM is tidied
        (`recover_saved`); instances' saved VMs too."""
        known = self.store.ids()
        for orphan in self.layout.ids_on_disk() - known:
            shutil.rmtree(self.layout.of(orphan).dir, ignore_errors=True)
        for snapshot in self.store.find():
            _move_flat_layout(self.layout.of(snapshot.id))
            recover_saved(self.slot(snapshot.id))
        for record in self.core.repo.all():
            recover_saved(instance_slot(self.core, record.id))


def _move_flat_layout(files: SavedVMFiles) -> None:
    """Snapshots taken before the layout was shared kept `vmstate` (and compressed payloads)
    at the top and volume disks under `volumes/`: move them where `SavedVMFiles` looks."""
    flat = [files.dir / n for n in ("vmstate", "vmstate.zst", "vmstate.lz4",
                                    "memory.ram.zst", "memory.ram.lz4")]  # fmt: skip
    for old in (p for p in flat if p.exists()):
        files.saved_dir.mkdir(exist_ok=True)
        old.rename(files.saved_dir / old.name)
    volumes = files.dir / "volumes"
    if volumes.is_dir():
        for disk in volumes.iterdir():
            disk.rename(files.volume_disk(disk.name))
        volumes.rmdir()


def volume_copy(attachment: Attachment, paths: InstanceLayout) -> VolumeCopy:
    disk = overlay_disk_path(paths.dir, attachment) if attachment.overlay else None
    return VolumeCopy(
        volume_id=attachment.volume_id,
        mount_path=attachment.mount_path,
        overlay_size_bytes=attachment.overlay_size_bytes,
        overlay_disk=disk.name if disk is not None and disk.exists() else None,
    )
