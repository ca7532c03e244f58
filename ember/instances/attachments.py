"""The volumes an instance mounts, as an instance resource.

Attachments are recorded at create (the sharing rules are checked atomically
by the volume manager), plugged in as volume slots at each boot (with a
private overlay disk per `overlay: true` attachment, made on first boot) and
dropped at delete. The volumes themselves outlive the instance. A restore
plugs in the slots exactly as the VM it continues last had them (a volume
attached or detached while it ran changed them; see mounts.py).
"""

from __future__ import annotations

import asyncio

from ember.instances.layout import InstanceLayout
from ember.instances.models import InstanceRecord
from ember.instances.plan import BootDevices, CreatePlan
from ember.instances.resources import InstanceResource
from ember.volumes import VolumeManager
from ember.volumes.slots import load_table, save_table


class VolumeAttachments(InstanceResource):
    name = "volume attachments"

    def __init__(self, volumes: VolumeManager) -> None:
        self.volumes = volumes

    def check(self, plan: CreatePlan) -> None:
        for volume in plan.volumes:
            self.volumes.get(volume.volume)  # 404 for a volume that does not exist

    async def acquire(self, plan: CreatePlan, layout: InstanceLayout) -> None:
        record = plan.record
        for volume in plan.volumes:
            self.volumes.attach(
                volume.volume, record.id, record.name, volume.mount_path,
                readonly=volume.readonly, overlay=volume.overlay_bytes is not None,
                overlay_size=volume.overlay_bytes,
            )  # fmt: skip

    async def release(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        self.volumes.release_instance(record.id)

    async def attach(self, record: InstanceRecord, layout: InstanceLayout) -> BootDevices:
        attachments = self.volumes.attachments_of(record.id)
        table = load_table(layout.dir) if record.standby is not None else None
        if table is None or not table.holds_exactly(attachments):
            # A fresh boot, a fork's first restore (it has no table), or a table left
            # from before the attachments changed: it must not open a volume it lost.
            await asyncio.to_thread(self.volumes.prepare_overlay_disks, attachments, layout.dir)
            table = self.volumes.slot_table(attachments, layout.dir)
            save_table(layout.dir, table)
        return BootDevices(disks=table.disks, volumes=tuple(self.volumes.guest_mounts(attachments)))

    def sweep(self, live_ids: set[str]) -> None:
        for instance_id in self.volumes.attached_instance_ids() - live_ids:
            self.volumes.release_instance(instance_id)
