"""The VMM's jail as an instance resource: a uid of its own, and a cgroup per boot.

The uid (gid the same number) is taken from Ember's range at create (or fork), kept
in the record, and given back at delete; an instance made before the jail existed
gets one at its next boot. Each boot gets a fresh cgroup with the limits of the
record (memory, vCPUs, disk rate, process count); it goes when the VMM has gone,
after `exit_reason` has read whether the kernel's OOM killer ended it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from ember.config import Settings
from ember.errors import NotFound, Unavailable
from ember.hypervisor.jail import (
    Cgroups,
    JailLimits,
    JailSpec,
    block_device_of,
    detect_cgroups,
    empty_root,
)
from ember.instances.layout import InstanceLayout
from ember.instances.models import InstanceRecord
from ember.instances.plan import BootDevices, CreatePlan
from ember.instances.resources import InstanceResource
from ember.store import Repository
from ember.units import format_size

# QEMU's own threads (main loop, RCU, I/O workers: up to 64 in its thread pool) beside
# one per vCPU; a guest cannot make QEMU fork, so this only stops a runaway.
PIDS_BASE = 96
# CPU time beyond the vCPUs for QEMU's main loop (device emulation, I/O completion).
EMULATOR_CPUS = 0.5
JAIL_ROOT = "jail-root"  # under the runtime dir: the empty directory VMMs are chrooted into


class VmmJail(InstanceResource):
    name = "vmm jail"

    def __init__(
        self,
        *,
        uid_base: int,
        uid_count: int,
        root: Path,
        cgroups: Cgroups | None,
        memory_overhead: int,
        uids_in_records: Callable[[], set[int]],
        record_uid: Callable[[str, int], None],
    ) -> None:
        """`root`: the empty directory VMMs are chrooted into; `uids_in_records`: the uids
        every stored instance holds; `record_uid` stores one in an instance's record."""
        self.uid_base, self.uid_count = uid_base, uid_count
        self.root = root
        self.cgroups = cgroups
        self.memory_overhead = memory_overhead
        self._uids_in_records = uids_in_records
        self._record_uid = record_uid
        self._held: set[int] = set()  # given out, maybe not in a stored record yet

    def allocate(self) -> int:
        taken = self._held | self._uids_in_records()
        for uid in range(self.uid_base, self.uid_base + self.uid_count):
            if uid not in taken:
                self._held.add(uid)
                return uid
        raise Unavailable(f"no free VMM uid left in [{self.uid_base}, +{self.uid_count})")

    async def acquire(self, plan: CreatePlan, layout: InstanceLayout) -> None:
        uid = self.allocate()
        plan.record.vmm_uid = uid  # a fork's record arrives with its source's uid
        self._record_uid(plan.record.id, uid)
        # Its disks and memory file are QEMU's through open descriptors only; no other
        # user (another VMM's uid) may read them by path.
        os.chmod(layout.dir, 0o700)

    async def release(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        if record.vmm_uid is not None:
            self._held.discard(record.vmm_uid)
        self._remove_cgroup(record.id)

    async def attach(self, record: InstanceRecord, layout: InstanceLayout) -> BootDevices:
        uid = record.vmm_uid
        if uid is None:  # made before the jail, or while it was off
            uid = self.allocate()
            self._record_uid(record.id, uid)
        layout.run.mkdir(parents=True, exist_ok=True)
        os.chmod(layout.run, 0o700)  # its QMP and agent sockets: Ember's alone
        procs: tuple[Path, ...] = ()
        if self.cgroups is not None:
            # One left by a boot whose detach never ran (a crash) would carry its counters,
            # an old OOM kill included, into this boot's exit reason.
            self._remove_cgroup(record.id)
            cgroups, limits = self.cgroups, self.limits(record, layout)
            procs = await asyncio.to_thread(cgroups.create, record.id, limits)
        return BootDevices(jail=JailSpec(uid, uid, empty_root(self.root), procs))

    def limits(self, record: InstanceRecord, layout: InstanceLayout) -> JailLimits:
        device = block_device_of(layout.dir) if record.disk_io_bps else None
        return JailLimits(
            memory_bytes=record.memory_bytes + self.memory_overhead,
            cpus=record.vcpus + EMULATOR_CPUS,
            cpu_weight=record.vcpus + 1,  # its vCPU threads and QEMU's main loop
            pids=PIDS_BASE + record.vcpus,
            io_bps=record.disk_io_bps,
            io_device=device,
        )

    async def detach(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        self._remove_cgroup(record.id)

    def exit_reason(self, record: InstanceRecord) -> str | None:
        if self.cgroups is None or not self.cgroups.oom_killed(record.id):
            return None
        limit = format_size(record.memory_bytes + self.memory_overhead)
        return (
            f"the VMM was killed by the kernel: it exceeded its memory limit of {limit} "
            f"(guest {format_size(record.memory_bytes)} + "
            f"{format_size(self.memory_overhead)} VMM overhead)"
        )

    def _remove_cgroup(self, instance_id: str) -> None:
        if self.cgroups is not None:
            with contextlib.suppress(OSError):
                self.cgroups.remove(instance_id)


def vmm_jail(settings: Settings, repo: Repository[InstanceRecord]) -> VmmJail:
    """The jail of this server's VMMs, on the cgroup hierarchy this host has."""

    def uids_in_records() -> set[int]:
        return {r.vmm_uid for r in repo.all() if r.vmm_uid is not None}

    def record_uid(instance_id: str, uid: int) -> None:
        # A create inserts its record before acquiring, a fork after.
        with contextlib.suppress(NotFound):
            repo.update(instance_id, lambda r: setattr(r, "vmm_uid", uid))

    return VmmJail(
        uid_base=settings.jail_uid_base,
        uid_count=settings.jail_uid_count,
        root=settings.runtime_dir / JAIL_ROOT,
        cgroups=detect_cgroups(),
        memory_overhead=settings.jail_memory_overhead_bytes,
        uids_in_records=uids_in_records,
        record_uid=record_uid,
    )
