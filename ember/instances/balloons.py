"""The running instances' balloons, as the memory reclaimer (ember/reclaim) sees them."""

from __future__ import annotations

from functools import partial

from ember.errors import EmberError
from ember.instances.core import InstanceCore
from ember.instances.state import State
from ember.reclaim import Guest


async def running_guests(core: InstanceCore) -> list[Guest]:
    """Every Running instance whose hypervisor has a balloon, with what it leaves the guest
    now; a VM that cannot be asked (it is going away) is left out of this plan."""
    guests: list[Guest] = []
    for record in core.repo.all():
        if record.state != State.RUNNING or record.pid is None:
            continue
        if record.memory_base is not None:
            # QEMU 7.2 discards a ballooned page by punching it out of the RAM file, even a
            # private mapping's: that would zero the page under every clone of a template.
            continue
        hypervisor = core.hypervisor(record)
        if not hypervisor.capabilities.balloon:
            continue
        vm = core.paths(record.id).handle(record.pid)
        try:
            current = await hypervisor.balloon_actual(vm)
        except (EmberError, OSError):
            continue
        guests.append(
            Guest(
                instance_id=record.id, instance_name=record.name,
                hypervisor=record.hypervisor, assigned_bytes=record.memory_bytes,
                current_bytes=current, set_target=partial(hypervisor.balloon_target, vm),
                read_actual=partial(hypervisor.balloon_actual, vm),
            )
        )  # fmt: skip
    return guests
