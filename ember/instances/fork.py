"""Fork: a new instance made like another one, from its saved VM or disks.

    fork_instance:  check -> place the source's files into a new instance -> restore or boot
    fork_snapshot:  check -> place the snapshot's files into a new instance -> restore or boot
    from_running:   standby the source -> fork_instance -> restore the source

The fork gets its own id, name, disks (sparse copies), memory file, MAC and
IP: it holds what any instance holds, acquired through the same `Resources`
as a create, and its record is inserted last, in Standby (with the saved VM)
or Stopped, once every file is in place. So a failed placing releases
everything and leaves no record, and a server killed mid-fork leaves only
orphans that the start sweep releases. Its saved VM is marked
`foreign_network`: the one restore gives the guest the fork's own network
identity (`saved.identity`). A failed restore leaves the fork in Standby with
`state_error`, like any restore.
"""

from __future__ import annotations

import time

from ember.errors import Conflict, InvalidArgument
from ember.ids import is_id, new_id
from ember.images.models import utcnow
from ember.instances.admission import admit
from ember.instances.boot import boot
from ember.instances.models import InstanceRecord, RestartStatus
from ember.instances.plan import CreatePlan, NetworkPlan, VolumePlan
from ember.instances.saved.place import place_saved_vm
from ember.instances.saved.restore import restore
from ember.instances.snapshot import (
    Snapshots,
    check_hypervisor,
    check_target,
    default_target,
    volume_copy,
)
from ember.instances.standby import standby
from ember.instances.state import State
from ember.snapshots.layout import SavedVMFiles
from ember.snapshots.models import NetworkCopy, SavedVM, SnapshotKind, VolumeCopy
from ember.validation import validate_name

__all__ = ["fork_instance", "fork_snapshot"]


async def fork_instance(
    snaps: Snapshots,
    source_id: str,
    name: str,
    *,
    from_running: bool = False,
    target_state: State | None = None,
) -> InstanceRecord:
    core = snaps.core
    _check_name(snaps, name)
    record = core.current(source_id)
    if record.state in (State.RUNNING, State.PAUSED) and not from_running:
        raise Conflict(
            f"instance {record.name!r} is {record.state}: stop it, put it in standby, or "
            "fork with from_running=true (standby, copy, restore)",
            code="from_running_required",
        )
    if record.state not in (State.RUNNING, State.PAUSED, State.STANDBY, State.STOPPED):
        raise Conflict(f"instance {record.name!r} is {record.state}: it cannot be forked",
                       code="invalid_state")  # fmt: skip
    was_running = record.state in (State.RUNNING, State.PAUSED)
    kind: SnapshotKind = "Stopped" if record.state == State.STOPPED else "Standby"
    target = target_state or (State.RUNNING if was_running else State(record.state))
    check_target(kind, target)
    attachments = snaps.capturable(record)
    if was_running:
        await standby(core, snaps.jobs, source_id)
    try:
        async with core.lock(source_id):  # the source's files stay put while copied
            record = core.current(source_id)
            paths = core.paths(source_id)
            volumes = [volume_copy(a, paths) for a in attachments]
            saved = record.standby if record.state == State.STANDBY else None
            fork = await _place_fork(snaps, record, paths, saved, name, target,
                                     volumes=volumes, network=snaps.network_of(record),
                                     share_memory=False)  # fmt: skip
    finally:
        if was_running:
            await restore(core, snaps.jobs, snaps.network, source_id)
    return await _bring_to(snaps, fork, target)


async def fork_snapshot(
    snaps: Snapshots,
    snapshot_ref: str,
    name: str,
    *,
    target_state: State | None = None,
    target_hypervisor: str | None = None,
) -> InstanceRecord:
    snapshot = snaps.get(snapshot_ref)
    target = target_state or default_target(snapshot.kind)
    check_target(snapshot.kind, target)
    check_hypervisor(snapshot.kind, snapshot.source_hypervisor, target_hypervisor)
    _check_name(snaps, name)
    source = InstanceRecord.model_validate(snapshot.source)
    if target_hypervisor is not None:
        source.hypervisor = snaps.core.hypervisors.get(target_hypervisor).name
    slot = snaps.slot(snapshot.id)
    async with slot.lock:
        fork = await _place_fork(snaps, source, slot.files, snapshot.memory, name, target,
                                 volumes=snapshot.volumes, network=snapshot.network,
                                 share_memory=source.shareable_memory)  # fmt: skip
    return await _bring_to(snaps, fork, target)


def _check_name(snaps: Snapshots, name: str) -> None:
    validate_name(name)
    if is_id(name):
        raise InvalidArgument(f"name: {name!r} has the shape of an instance id")
    if snaps.core.repo.by_name(name) is not None:
        raise Conflict(f"instance {name!r} already exists", code="already_exists")


def _fork_record(source: InstanceRecord, name: str, state: State) -> InstanceRecord:
    """The source's record made the fork's: what it runs and how it is sized and
    supervised, none of what belongs to the source's life."""
    return source.model_copy(
        update={
            "id": new_id(), "name": name, "state": state, "state_error": None,
            "created_at": utcnow(), "started_at": None, "stopped_at": None, "pid": None,
            "exit_code": None, "exit_message": None, "standby": None, "phases": None,
            "restart_status": RestartStatus(),
        },
        deep=True,
    )  # fmt: skip


async def _place_fork(
    snaps: Snapshots,
    source: InstanceRecord,
    src: SavedVMFiles,
    saved: SavedVM | None,
    name: str,
    target: State,
    *,
    volumes: list[VolumeCopy],
    network: NetworkCopy | None,
    share_memory: bool,
) -> InstanceRecord:
    """Acquire the fork's resources, place the files, insert its record (Standby when it
    gets the saved VM, else Stopped); on any failure release everything. `share_memory`:
    map the RAM file of `src` copy-on-write (only a snapshot's: it never changes)."""
    core = snaps.core
    with_memory = saved is not None and target != State.STOPPED
    record = _fork_record(source, name, State.STANDBY if with_memory else State.STOPPED)
    if target == State.RUNNING:
        admit(core, record)
    plan = CreatePlan(
        record=record,
        network=NetworkPlan(network.download_bps, network.upload_bps) if network else None,
        volumes=tuple(VolumePlan(v.volume_id, v.mount_path, True, v.overlay_size_bytes)
                      for v in volumes),
    )  # fmt: skip
    core.resources.check(plan)
    paths = core.paths(record.id)
    started = time.monotonic()
    await core.resources.acquire(plan, paths)
    try:
        disks = [v.overlay_disk for v in volumes if v.overlay_disk]
        placed = await place_saved_vm(src, saved if with_memory else None, disks, paths,
                                      share_memory=share_memory)  # fmt: skip
        if placed is not None:
            # Its guest wakes up as the source, MAC and IP included (see saved.identity).
            copy = {"foreign_network": network is not None, "foreign_identity": True}
            record.standby = placed.model_copy(update=copy)
        core.repo.insert(record)
    except BaseException:
        await core.resources.release(record, paths)
        raise
    core.changes.notify()
    core.event(record.id, f"forked from {source.name!r} ({source.id}) in "
                          f"{time.monotonic() - started:.3f} s: state {record.state}")  # fmt: skip
    return record


async def _bring_to(snaps: Snapshots, fork: InstanceRecord, target: State) -> InstanceRecord:
    """From the fork's inserted state (Standby or Stopped) to `target`."""
    core = snaps.core
    if target != State.RUNNING:
        return core.current(fork.id)
    if fork.state == State.STOPPED:
        async with core.lock(fork.id):
            return await boot(core, core.current(fork.id))
    return await restore(core, snaps.jobs, snaps.network, fork.id)
