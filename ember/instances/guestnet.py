"""Restoring a saved guest that still has another VM's network settings (a fork).

The guest wakes up with the source's MAC, address and hostname in its memory.
Its TAP is taken down before the VM resumes (the bridge then learns and
forwards nothing from it: a second guest speaking with the source's MAC would
steal the source's traffic) and comes up once the agent has given eth0 the
fork's own MAC, address, route and resolvers (`SET_NETWORK`). If the agent
cannot, the TAP stays down and `state_error` says why.
"""

from __future__ import annotations

import asyncio
import time

from ember.errors import EmberError, Unavailable
from ember.instances import restore as restoring
from ember.instances.core import InstanceCore
from ember.instances.models import InstanceRecord
from ember.network import NetworkManager
from ember.snapshots.compression import BackgroundJobs

AGENT_TIMEOUT = 30.0


async def restore_own_network(
    core: InstanceCore,
    jobs: BackgroundJobs,
    network: NetworkManager | None,
    instance_id: str,
) -> InstanceRecord:
    """`restore_locked` (the lock is held) for a Standby instance whose saved guest may have
    foreign network settings; a plain restore when it does not."""
    record = core.current(instance_id)
    foreign = record.standby is not None and record.standby.foreign_network
    if not foreign or network is None or network.lease(instance_id) is None:
        return await restoring.restore_locked(core, jobs, instance_id)

    async def carrier_down(record: InstanceRecord) -> None:
        await asyncio.to_thread(network.set_carrier, record.id, False)

    record = await restoring.restore_locked(core, jobs, instance_id, before_resume=carrier_down)
    await _own_network(core, network, record)
    return core.current(instance_id)


async def _own_network(core: InstanceCore, network: NetworkManager, record: InstanceRecord) -> None:
    lease = network.lease(record.id)
    assert lease is not None
    try:
        if record.skip_guest_agent:
            raise Unavailable("the instance has no guest agent to set its address")
        deadline = time.monotonic() + AGENT_TIMEOUT
        while (agent := core.agents.get(record.id)) is None or not agent.connected:
            if time.monotonic() > deadline or record.id not in core.monitors:
                raise Unavailable("the guest agent did not come back after the restore")
            await asyncio.sleep(0.01)
        await agent.set_network(network.guest_config(lease), hostname=record.name)
        core.event(record.id, f"guest network set to {lease.ip} ({lease.mac})")
    except (EmberError, OSError, TimeoutError) as exc:
        message = f"the guest keeps the network settings of the VM it was forked from: {exc}"
        core.event(record.id, message + "; its TAP stays down")
        core.update(record.id, lambda r: setattr(r, "state_error", message))
        return
    await asyncio.to_thread(network.set_carrier, record.id, True)
