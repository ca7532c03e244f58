"""What an instance holds, acquired and released through one interface.

Each kind of holding (its files and overlay disk, its root disk, its network
lease, its volume attachments, ...) is an `InstanceResource`. `Resources`
runs them in order: a create acquires them one by one and, when a step fails,
releases the ones it got in reverse order; a delete releases all of them in
reverse order. The same goes for what each boot plugs in (TAP devices, extra
disks) and unplugs when the VMM is gone. Releases are idempotent, so a delete
after a half-made create, or a second delete after a crash, is safe.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from ember.instances.layout import InstanceLayout
from ember.instances.models import InstanceRecord
from ember.instances.plan import BootDevices, CreatePlan

log = logging.getLogger("ember.instances")


class InstanceResource:
    """One kind of thing an instance holds from create to delete. Subclasses override
    what they need; the defaults hold nothing."""

    name = "resource"

    def check(self, plan: CreatePlan) -> None:
        """Before any side effect of a create: refuse what this resource cannot give
        (queries only, no change)."""

    async def acquire(self, plan: CreatePlan, layout: InstanceLayout) -> None:
        """At create, before the first boot."""

    async def release(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        """At delete or when a create is undone; must be idempotent."""

    async def attach(self, record: InstanceRecord, layout: InstanceLayout) -> BootDevices:
        """At each boot: what the VM gets from this resource."""
        return BootDevices()

    async def detach(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        """When the VMM of a boot is gone; must be idempotent."""

    def exit_reason(self, record: InstanceRecord) -> str | None:
        """Once the VMM has gone, before `detach`: why it went, if this resource knows
        (the kernel killed it for exceeding a limit); None otherwise."""
        return None

    def sweep(self, live_ids: set[str]) -> None:
        """At server start: let go of what instances that no longer exist still hold."""


class Resources:
    """The resources of every instance, in acquisition order."""

    def __init__(self, resources: Sequence[InstanceResource]) -> None:
        self._resources = tuple(resources)

    def check(self, plan: CreatePlan) -> None:
        for resource in self._resources:
            resource.check(plan)

    async def acquire(self, plan: CreatePlan, layout: InstanceLayout) -> None:
        held: list[InstanceResource] = []
        try:
            for resource in self._resources:
                await resource.acquire(plan, layout)
                held.append(resource)
        except BaseException:
            await _each_reversed(held, lambda r: r.release(plan.record, layout), "release")
            raise

    async def release(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        await _each_reversed(self._resources, lambda r: r.release(record, layout), "release")

    async def attach(self, record: InstanceRecord, layout: InstanceLayout) -> BootDevices:
        devices, attached = BootDevices(), []
        try:
            for resource in self._resources:
                devices = devices.merge(await resource.attach(record, layout))
                attached.append(resource)
        except BaseException:
            await _each_reversed(attached, lambda r: r.detach(record, layout), "detach")
            raise
        return devices

    async def detach(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        await _each_reversed(self._resources, lambda r: r.detach(record, layout), "detach")

    def exit_reason(self, record: InstanceRecord) -> str | None:
        return next(filter(None, (r.exit_reason(record) for r in self._resources)), None)

    def sweep(self, live_ids: set[str]) -> None:
        for resource in self._resources:
            resource.sweep(live_ids)


Step = Callable[[InstanceResource], Awaitable[None]]


async def _each_reversed(resources: Sequence[InstanceResource], step: Step, what: str) -> None:
    """Run `step` on each resource, last first; a failure is logged and the rest still run,
    so one stuck resource cannot keep the others held."""
    for resource in reversed(resources):
        try:
            await step(resource)
        except Exception:
            log.exception("cannot %s %s", what, resource.name)
