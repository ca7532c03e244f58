"""Attach and detach volumes on an existing instance (only while it is Stopped:
QEMU's microvm machine has no disk hotplug)."""

from __future__ import annotations

from ember.instances.core import InstanceCore, invalid
from ember.instances.models import InstanceRecord
from ember.instances.state import State
from ember.volumes import VolumeManager


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
        record = _stopped(core, instance_id, "attach a volume to")
        attachment = volumes.attach(volume, record.id, record.name, mount_path, readonly=readonly)
        mode = "read-only" if readonly else "read-write"
        core.event(record.id, f"volume {attachment.volume_id} attached at {mount_path} ({mode})")
    return core.current(instance_id)


async def detach_volume(
    core: InstanceCore, volumes: VolumeManager, instance_id: str, volume: str
) -> InstanceRecord:
    async with core.lock(instance_id):
        record = _stopped(core, instance_id, "detach a volume from")
        volumes.detach(volume, record.id)
        core.event(record.id, f"volume {volume} detached")
    return core.current(instance_id)


def _stopped(core: InstanceCore, instance_id: str, action: str) -> InstanceRecord:
    record = core.current(instance_id)
    if record.state != State.STOPPED:
        raise invalid(
            record, action, "volumes change only while it is Stopped (the microvm machine "
            "has no disk hotplug): stop it first",
        )  # fmt: skip
    return record
