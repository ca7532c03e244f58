"""The instance's place on the network, as an instance resource.

The lease (IP, MAC, TAP name, limits) is held from create to delete; the TAP
is plugged before each boot (QEMU opens it by name) and kept while the
instance is stopped, so a start finds it ready. Delete releases both.
"""

from __future__ import annotations

import asyncio

from ember.hypervisor import NicSpec
from ember.instances.layout import InstanceLayout
from ember.instances.models import InstanceRecord
from ember.instances.plan import BootDevices, CreatePlan
from ember.instances.resources import InstanceResource
from ember.network import NetworkManager


class NetworkLease(InstanceResource):
    name = "network lease"

    def __init__(self, network: NetworkManager) -> None:
        self.network = network

    async def acquire(self, plan: CreatePlan, layout: InstanceLayout) -> None:
        if plan.network is not None:
            record, wanted = plan.record, plan.network
            await asyncio.to_thread(
                self.network.allocate, record.id, record.name, wanted.download_bps,
                wanted.upload_bps,
            )  # fmt: skip

    async def release(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        await asyncio.to_thread(self.network.release, record.id)

    async def attach(self, record: InstanceRecord, layout: InstanceLayout) -> BootDevices:
        lease = self.network.lease(record.id)
        if lease is None:  # created with `network.enabled: false`
            return BootDevices()
        tap = await asyncio.to_thread(self.network.plug, lease)
        return BootDevices(
            nics=(NicSpec(tap=tap, mac=lease.mac),), network=self.network.guest_config(lease)
        )

    def sweep(self, live_ids: set[str]) -> None:
        for lease in self.network.leases.all():
            if lease.instance_id not in live_ids:
                self.network.release(lease.instance_id)
