"""A restored guest's identity when it was saved as another VM (a fork, a clone): its
random state, machine-id, hostname and network; and its wall clock. All set through the
guest agent once it is back.

Every copy is unique (`SavedVM.foreign_identity`): clones of one saved VM wake with the
same kernel CRNG state, so the agent mixes 64 bytes of fresh host entropy into it and
forces a reseed (RNDADDENTROPY + RNDRESEEDCRNG) first, then writes a new machine-id and
sets the hostname. QEMU's `vmgenid` device would do the reseed at resume without the
agent, but microvm's ACPI tables (hw/i386/acpi-microvm.c, QEMU 7.2) carry no VMGENID
device: QEMU accepts `-device vmgenid` and the guest never sees it.

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
    core: InstanceCore,
    network: GuestNetworks | None,
    instance_id: str,
    lease: Lease | None,
    *,
    resume_workload: bool = False,
) -> None:
    """Make a copy of another VM its own: its kernel's CRNG reseeded from host entropy, its
    own machine-id and hostname (then, with `resume_workload`, its stopped workload goes
    on), then (with `lease`) its own network settings and its TAP up. What fails is said
    in `state_error`; without its network the TAP stays down."""
    record = core.current(instance_id)
    try:
        if record.skip_guest_agent:
            raise Unavailable("the instance has no guest agent to make it its own")
        agent = await await_agent(core, instance_id)
    except (EmberError, OSError, TimeoutError) as exc:
        _keeps(core, instance_id, "identity and network", exc, lease is not None)
        return
    try:
        await agent.set_identity(record.name, resume_workload=resume_workload)
        core.event(instance_id, "guest CRNG reseeded from host entropy; own machine-id, hostname")
    except (EmberError, OSError, TimeoutError) as exc:  # an agent from before SET_IDENTITY
        _keeps(core, instance_id, "random state and machine-id", exc, False)
    if lease is None or network is None:
        return
    try:
        await agent.set_network(network.guest_config(lease), hostname=record.name)
        core.event(instance_id, f"guest network set to {lease.ip} ({lease.mac})")
    except (EmberError, OSError, TimeoutError) as exc:
        _keeps(core, instance_id, "network settings", exc, True)
        return
    await asyncio.to_thread(network.set_carrier, instance_id, True)


def _keeps(core: InstanceCore, instance_id: str, what: str, exc: BaseException,
           tap_down: bool) -> None:  # fmt: skip
    message = f"the guest keeps the {what} of the VM it was copied from: {exc}"
    core.event(instance_id, message + ("; its TAP stays down" if tap_down else ""))
    core.update(instance_id, lambda r: setattr(r, "state_error", message))


async def set_clock(core: InstanceCore, instance_id: str, timeout: float = 10.0) -> None:
    """The guest's wall clock lags by the time it spent saved: tell it the host's time."""
    try:
        agent = await await_agent(core, instance_id, timeout)
        await agent.set_time()
    except (EmberError, OSError, TimeoutError) as exc:
        core.event(instance_id, f"restore: guest clock not set: {exc}")
        return
    core.event(instance_id, "restore: guest clock set")
