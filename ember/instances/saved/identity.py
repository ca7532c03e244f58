"""A restored guest's identity: its network when it was saved as another VM (a fork),
and its wall clock, both set through the guest agent once it is back.

A fork's guest wakes up with the source's MAC, address and hostname in its
memory (`SavedVM.foreign_network`). Its TAP is taken down before the VM
resumes (`quiet_network`: the bridge then learns and forwards nothing from it,
so it cannot steal the source's traffic) and comes up once the agent has given
eth0 the fork's own MAC, address, route and resolvers (`claim_identity`). If
the agent cannot, the TAP stays down and `state_error` says why.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ember.errors import EmberError, Unavailable
from ember.guest.config import GuestNetwork
from ember.instances.core import InstanceCore, await_agent
from ember.network import Lease

__all__ = ["GuestNetworks", "claim_identity", "quiet_network", "set_clock"]


class GuestNetworks(Protocol):
    """What identity needs of the network manager."""

    def lease(self, instance_id: str) -> Lease | None: ...

    def set_carrier(self, instance_id: str, up: bool) -> None: ...

    def guest_config(self, lease: Lease) -> GuestNetwork: ...


async def quiet_network(network: GuestNetworks, instance_id: str) -> None:
    await asyncio.to_thread(network.set_carrier, instance_id, False)


async def claim_identity(
    core: InstanceCore, network: GuestNetworks, instance_id: str, lease: Lease
) -> None:
    """Give the guest its own network settings, then bring its TAP up; on failure the TAP
    stays down and `state_error` says why."""
    record = core.current(instance_id)
    try:
        if record.skip_guest_agent:
            raise Unavailable("the instance has no guest agent to set its address")
        agent = await await_agent(core, instance_id)
        await agent.set_network(network.guest_config(lease), hostname=record.name)
        core.event(instance_id, f"guest network set to {lease.ip} ({lease.mac})")
    except (EmberError, OSError, TimeoutError) as exc:
        message = f"the guest keeps the network settings of the VM it was forked from: {exc}"
        core.event(instance_id, message + "; its TAP stays down")
        core.update(instance_id, lambda r: setattr(r, "state_error", message))
        return
    await asyncio.to_thread(network.set_carrier, instance_id, True)


async def set_clock(core: InstanceCore, instance_id: str, timeout: float = 10.0) -> None:
    """The guest's wall clock lags by the time it spent saved: tell it the host's time."""
    try:
        agent = await await_agent(core, instance_id, timeout)
        await agent.set_time()
    except (EmberError, OSError, TimeoutError) as exc:
        core.event(instance_id, f"restore: guest clock not set: {exc}")
        return
    core.event(instance_id, "restore: guest clock set")
