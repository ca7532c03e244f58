"""Mediated egress as an instance resource (`ember/egress`).

Its state (policy, credentials with their real values, CA) is made at create,
after the network lease (its rules need the guest's address), and removed at
delete; each boot hands the guest the CA to trust. The rules and the proxy's
view follow the state, not the VMM: a stopped guest sends nothing anyway.
"""

from __future__ import annotations

import asyncio

from ember.egress import EgressManager
from ember.instances.layout import InstanceLayout
from ember.instances.models import InstanceRecord
from ember.instances.plan import BootDevices, CreatePlan
from ember.instances.resources import InstanceResource


class MediatedEgress(InstanceResource):
    name = "mediated egress"

    def __init__(self, egress: EgressManager) -> None:
        self.egress = egress

    async def acquire(self, plan: CreatePlan, layout: InstanceLayout) -> None:
        if plan.egress is not None:
            await asyncio.to_thread(self.egress.create, plan.record.id, plan.egress)

    async def release(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        await asyncio.to_thread(self.egress.remove, record.id)

    async def attach(self, record: InstanceRecord, layout: InstanceLayout) -> BootDevices:
        return BootDevices(ca_certificates=self.egress.ca_pem(record.id))

    def sweep(self, live_ids: set[str]) -> None:
        self.egress.sweep(live_ids)
