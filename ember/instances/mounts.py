"""Attach and detach volumes on an existing instance, Stopped or Running.

Stopped: only the attachment record changes; the next boot plugs the volume in.
Running: QEMU's microvm has no hotplug bus, so every VM boots with empty volume
slots (ember/volumes/slots.py). Attach records the attachment, backs a free slot
with the volume (`Hypervisor.change_disk`, which also tells the guest the new
size) and has the guest agent mount it; detach has the agent unmount it (refused
while the guest still uses it), then empties the slot and drops the record. A
step that fails undoes the ones before it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ember.errors import Conflict, EmberError, InvalidState, NotFound, Unavailable
from ember.guest.client import AgentClient
from ember.hypervisor import DiskSpec
from ember.instances.core import InstanceCore, invalid
from ember.instances.models import InstanceRecord
from ember.instances.state import State
from ember.volumes import Attachment, VolumeManager
from ember.volumes.slots import SlotTable, emptied, holding, layer_path, load_table, save_table


async def attach_volume(
    core: InstanceCore,
    volumes: VolumeManager,
    instance_id: str,
    volume: str,
    mount_path: str,
    *,
    readonly: bool,
) -> InstanceRecord:
    async with core.lock(instance_id):
        record = _changeable(core, instance_id, "attach a volume to")
        attachment = volumes.attach(volume, record.id, record.name, mount_path, readonly=readonly)
        if record.state == State.RUNNING:
            try:
                await _plug(core, volumes, record, attachment)
            except BaseException:
                volumes.detach(attachment.volume_id, record.id)
                raise
        mode = "read-only" if readonly else "read-write"
        live = " (running: mounted in the guest)" if record.state == State.RUNNING else ""
        core.event(
            record.id, f"volume {attachment.volume_id} attached at {mount_path} ({mode}){live}"
        )
    return core.current(instance_id)


async def detach_volume(
    core: InstanceCore, volumes: VolumeManager, instance_id: str, volume: str
) -> InstanceRecord:
    async with core.lock(instance_id):
        record = _changeable(core, instance_id, "detach a volume from")
        if record.state == State.RUNNING:
            await _unplug(core, volumes, record, _attachment(volumes, record, volume))
        volumes.detach(volume, record.id)
        core.event(record.id, f"volume {volume} detached")
    return core.current(instance_id)


def _changeable(core: InstanceCore, instance_id: str, action: str) -> InstanceRecord:
    record = core.current(instance_id)
    if record.state not in (State.STOPPED, State.RUNNING):
        raise invalid(record, action, "volumes change while it is Stopped or Running")
    return record


def _attachment(volumes: VolumeManager, record: InstanceRecord, volume: str) -> Attachment:
    volume_id = volumes.get(volume).id
    found = [a for a in volumes.attachments_of(record.id) if a.volume_id == volume_id]
    if not found:
        raise NotFound(f"volume {volume!r} is not attached to instance {record.name!r}")
    return found[0]


async def _plug(
    core: InstanceCore, volumes: VolumeManager, record: InstanceRecord, attachment: Attachment
) -> None:
    agent = _agent(core, record)
    instance_dir = core.paths(record.id).dir
    table = _table(record, instance_dir)
    slot = table.free_slot(readonly=attachment.readonly)
    disk = await asyncio.to_thread(
        holding, slot, volumes.disk_path(attachment.volume_id), instance_dir,
        readonly=attachment.readonly,
    )  # fmt: skip
    try:
        table = await _swap(core, record, table, disk, attachment.volume_id)
    except BaseException:
        layer_path(instance_dir, slot.serial).unlink(missing_ok=True)
        raise
    try:
        await agent.mount_volume(slot.serial, attachment.mount_path, readonly=attachment.readonly)
    except (EmberError, OSError, TimeoutError) as exc:
        await _swap(core, record, table, emptied(table, slot.serial, instance_dir), None)
        raise Conflict(
            f"the guest of instance {record.name!r} could not mount the volume at "
            f"{attachment.mount_path}: {exc}",
            code="mount_failed",
        ) from exc


async def _unplug(
    core: InstanceCore, volumes: VolumeManager, record: InstanceRecord, attachment: Attachment
) -> None:
    if attachment.overlay:
        raise invalid(
            record, "detach an overlay volume from",
            "its private overlay disk stays plugged in until the VM stops: stop it first",
        )  # fmt: skip
    agent = _agent(core, record)
    instance_dir = core.paths(record.id).dir
    table = _table(record, instance_dir)
    slot = table.slot_of(attachment.volume_id)
    if slot is None:
        raise Unavailable(f"instance {record.name!r}: no volume slot holds {attachment.volume_id}")
    try:
        await agent.unmount_volume(attachment.mount_path)
    except (EmberError, OSError, TimeoutError) as exc:
        raise Conflict(
            f"cannot detach the volume from instance {record.name!r}: the guest could not "
            f"unmount {attachment.mount_path} ({exc}); stop what uses it, or the instance, "
            "and try again",
            code="volume_busy",
        ) from exc
    await _swap(core, record, table, emptied(table, slot.serial, instance_dir), None)


async def _swap(
    core: InstanceCore, record: InstanceRecord, table: SlotTable, disk: DiskSpec,
    volume_id: str | None,
) -> SlotTable:  # fmt: skip
    """Back a slot of the running VM with `disk`; the table follows what the VM has.
    An emptied slot's read-only layer (if any) goes."""
    assert record.pid is not None
    instance_dir = core.paths(record.id).dir
    await core.hypervisor(record).change_disk(core.paths(record.id).handle(record.pid), disk)
    table = table.swapped(disk, volume_id)
    save_table(instance_dir, table)
    if volume_id is None:
        layer_path(instance_dir, disk.serial).unlink(missing_ok=True)
    return table


def _table(record: InstanceRecord, instance_dir: Path) -> SlotTable:
    table = load_table(instance_dir)
    if table is None:
        raise invalid(
            record, "change the volumes of", "its VM booted without volume slots: restart it"
        )
    return table


def _agent(core: InstanceCore, record: InstanceRecord) -> AgentClient:
    if record.skip_guest_agent:
        raise InvalidState(
            f"instance {record.name!r} runs without the guest agent, which mounts volumes "
            "in a running guest: stop it to change its volumes",
            code="agent_unavailable",
        )
    agent = core.agents.get(record.id)
    if agent is None or not agent.connected:
        raise Unavailable(f"the guest agent of instance {record.name!r} is not connected yet")
    return agent
