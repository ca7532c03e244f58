"""Fork: a new instance made like another one, from its saved VM or disks.

From an instance (Stopped, Standby, or Running with `from_running`: standby,
copy, restore the source) or from a snapshot. The fork gets its own id,
name, disks (sparse copies), memory file, MAC and IP: it holds what any
instance holds, acquired through the same `Resources` as a create, and its
record is inserted last, in its final state (Stopped or Standby), once every
file is in place. So a failure releases everything and leaves no record, and
a server killed mid-fork leaves only orphans that the start sweep releases.

A fork restored from a saved VM wakes up with the source's MAC, address and
hostname in its memory. Its TAP stays down from before the VM resumes (the
bridge learns and forwards nothing from it) until the agent has given eth0
the fork's own MAC, address, route and resolvers (`SET_NETWORK`); then the
TAP comes up. Source and fork then run side by side.
"""

from __future__ import annotations

import time

from ember.errors import Conflict, InvalidArgument
from ember.ids import is_id, new_id
from ember.images.models import utcnow
from ember.instances import restore as restoring
from ember.instances import standby as standing
from ember.instances.admission import admit
from ember.instances.boot import boot
from ember.instances.guestnet import restore_own_network
from ember.instances.models import InstanceRecord, RestartStatus
from ember.instances.plan import CreatePlan, NetworkPlan, VolumePlan
from ember.instances.snapshot import (
    SavedFiles,
    Snapshots,
    as_standby,
    check_hypervisor,
    check_target,
    copy_disks,
    copy_memory,
    default_target,
    instance_files,
    snapshot_files,
)
from ember.instances.state import State
from ember.snapshots.models import NetworkCopy, SnapshotKind, VolumeCopy
from ember.validation import validate_name


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
        await standing.standby(core, snaps.instance_jobs, source_id)
    try:
        async with core.lock(source_id):
            await snaps.instance_jobs.cancel(source_id)  # the raw payload must stay put
            record = core.current(source_id)
            files = instance_files(record, core.paths(source_id), attachments)
            fork = await _materialize(
                snaps, record, files, name, target,
                volumes=[_volume(a.volume_id, a.mount_path, a.overlay_size_bytes, files)
                         for a in attachments],
                network=snaps._network_of(record),
            )  # fmt: skip
    finally:
        if was_running:
            await restoring.restore(core, snaps.instance_jobs, source_id)
    return await _finish(snaps, fork, target)


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
    async with snaps.files_lock(snapshot.id):
        files = snapshot_files(snapshot, snaps.layout.of(snapshot.id))
        fork = await _materialize(snaps, source, files, name, target,
                                  volumes=snapshot.volumes, network=snapshot.network)  # fmt: skip
    return await _finish(snaps, fork, target)


def _check_name(snaps: Snapshots, name: str) -> None:
    validate_name(name)
    if is_id(name):
        raise InvalidArgument(f"name: {name!r} has the shape of an instance id")
    if snaps.core.repo.by_name(name) is not None:
        raise Conflict(f"instance {name!r} already exists", code="already_exists")


def _volume(volume_id: str, mount_path: str, size: int | None, files: SavedFiles) -> VolumeCopy:
    disk = next((n for n in files.volume_disks if volume_id in n), None)
    return VolumeCopy(volume_id=volume_id, mount_path=mount_path, overlay_size_bytes=size,
                      overlay_disk=disk)  # fmt: skip


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


async def _materialize(
    snaps: Snapshots,
    source: InstanceRecord,
    files: SavedFiles,
    name: str,
    target: State,
    *,
    volumes: list[VolumeCopy],
    network: NetworkCopy | None,
) -> InstanceRecord:
    """Acquire the fork's resources, copy the files in, insert its record (Standby when it
    gets the saved VM, else Stopped); on any failure release everything."""
    core = snaps.core
    with_memory = files.memory is not None and target != State.STOPPED
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
        await copy_disks(files, paths.overlay, paths.config, paths.dir)
        if with_memory:
            assert files.memory is not None
            payload = paths.standby_payload(files.memory.memory_in_file)
            paths.standby.mkdir(parents=True, exist_ok=True)
            saved = as_standby(await copy_memory(files, paths.standby_state, payload))
            # Its guest wakes up with the source's MAC and IP (see restore_own_network).
            record.standby = saved.model_copy(update={"foreign_network": network is not None})
        core.repo.insert(record)
    except BaseException:
        await core.resources.release(record, paths)
        raise
    core.changes.notify()
    core.event(record.id, f"forked from {source.name!r} ({source.id}) in "
                          f"{time.monotonic() - started:.3f} s: state {record.state}")  # fmt: skip
    return record


async def _finish(snaps: Snapshots, fork: InstanceRecord, target: State) -> InstanceRecord:
    """Bring the fork from its inserted state to `target`."""
    core = snaps.core
    if target != State.RUNNING:
        return core.current(fork.id)
    if fork.state == State.STOPPED:
        async with core.lock(fork.id):
            return await boot(core, core.current(fork.id))
    async with core.lock(fork.id):
        return await restore_own_network(core, snaps.instance_jobs, snaps.network, fork.id)
