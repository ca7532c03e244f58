"""Restore: the one path from a placed saved VM (an instance in Standby) to Running.

Every way to Running from a saved VM comes here: `POST /restore`, a snapshot
restored into its instance, a fork's first start, the source of a
`from_running` fork. It is a list of named steps, each with its undo; what
differs between them is data in the saved VM (`foreign_network`), read by the
`quiet_network` step and by `claim_identity` after.

    ensure_raw_memory   stop a compression still running, decompress if need be
    attach_resources    plug the boot's resources back in      undo: unplug them
    quiet_network       a fork's TAP down until it has its own address
    start_from_saved    the VMM from the saved state, exactly the kernel, initrd,
                        memory mode and device set recorded   undo: kill the VMM
    mark_running        Standby -> Running, the monitor follows the VMM
                                                        undo: unfollow, Standby

Then, the VM running: the saved files go (`discard_saved`), a fork claims its
identity (CRNG reseeded, machine-id, hostname, network; awaited: the answer says
whether it has its address), and
the guest clock is set in an owned background job.

Failure (any step): the steps done are undone in reverse, the instance stays
in Standby with `state_error`, and its saved VM is left as it was (a VM on a
memory file writes it only once it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ember.errors import EmberError, InvalidState, Unavailable
from ember.hypervisor import VMHandle
from ember.instances.admission import admit
from ember.instances.core import InstanceCore, invalid
from ember.instances.models import InstanceRecord
from ember.instances.monitor import watch
from ember.instances.plan import BootDevices, vm_spec
from ember.instances.saved.compress import ensure_raw_memory
from ember.instances.saved.identity import (
    GuestNetworks,
    claim_identity,
    quiet_network,
    set_clock,
)
from ember.instances.saved.slots import await_vmm_exit, instance_slot
from ember.instances.state import State
from ember.network import Lease
from ember.snapshots.models import SavedVM
from ember.system import BootArtifacts
from ember.tasks import BackgroundJobs

__all__ = ["RESTORE_STEPS", "Restoring", "Step", "discard_saved", "restore"]

log = logging.getLogger("ember.instances")


@dataclass
class Restoring:
    """One restore in progress: what its steps share."""

    core: InstanceCore
    jobs: BackgroundJobs
    record: InstanceRecord
    saved: SavedVM
    lease: Lease | None  # set when the guest must claim its own network identity
    network: GuestNetworks | None
    devices: BootDevices = field(default_factory=BootDevices)
    handle: VMHandle | None = None
    standby_record: InstanceRecord | None = None  # as it was before `mark_running`


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    run: Callable[[Restoring], Awaitable[None]]
    undo: Callable[[Restoring], Awaitable[None]] | None = None


async def _ensure_raw_memory(r: Restoring) -> None:
    r.saved = await ensure_raw_memory(r.jobs, instance_slot(r.core, r.record.id))


async def _attach_resources(r: Restoring) -> None:
    r.devices = await r.core.resources.attach(r.record, r.core.paths(r.record.id))


async def _detach_resources(r: Restoring) -> None:
    await r.core.resources.detach(r.record, r.core.paths(r.record.id))


async def _quiet_network(r: Restoring) -> None:
    if r.lease is not None and r.network is not None:
        await quiet_network(r.network, r.record.id)


async def _start_from_saved(r: Restoring) -> None:
    core, record, saved = r.core, r.record, r.saved
    paths = core.paths(record.id)
    hypervisor = core.hypervisor(record)
    rootfs = core.images.rootfs_of(record.image_digest)
    base = Path(saved.memory_base) if saved.memory_base else None
    spec = vm_spec(record, paths, _booted_with(saved), rootfs, r.devices,
                   memory_in_file=saved.memory_in_file, memory_base=base)  # fmt: skip
    devices = hypervisor.device_set(spec)
    if saved.devices is not None and devices != saved.devices:
        raise InvalidState(
            f"the saved VM has the devices {', '.join(saved.devices)} but would now get "
            f"{', '.join(devices)}: it cannot be restored (delete it or restore an older "
            "snapshot's disks with target_state Stopped)"
        )
    paths.run.mkdir(parents=True, exist_ok=True)
    r.handle = await hypervisor.restore(spec, paths.vmstate)


async def _kill_vmm(r: Restoring) -> None:
    if r.handle is not None:
        hypervisor = r.core.hypervisor(r.record)
        hypervisor.kill(r.handle)
        await hypervisor.wait_exit(r.handle, timeout=10)


async def _mark_running(r: Restoring) -> None:
    assert r.handle is not None
    r.standby_record = r.record
    r.record = r.core.transition(r.record.id, State.RUNNING, "restored from a saved VM",
                                 pid=r.handle.pid, vm_devices=r.saved.devices,
                                 stop_reason=None, exit_message=None,
                                 memory_base=r.saved.memory_base)  # fmt: skip
    watch(r.core, r.record, r.handle)


async def _mark_standby(r: Restoring) -> None:
    """Stop following the VMM (the next undo kills it) and be in Standby again."""
    monitor = r.core.monitors.get(r.record.id)
    if monitor is not None:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
    if r.core.current(r.record.id).state == State.RUNNING:
        before = r.standby_record or r.record  # why it stopped is still true in Standby
        r.core.transition(
            r.record.id,
            State.STANDBY,
            "restore undone",
            pid=None,
            stop_reason=before.stop_reason,
            exit_message=before.exit_message,
        )


RESTORE_STEPS: tuple[Step, ...] = (
    Step("ensure_raw_memory", _ensure_raw_memory),
    Step("attach_resources", _attach_resources, _detach_resources),
    Step("quiet_network", _quiet_network),
    Step("start_from_saved", _start_from_saved, _kill_vmm),
    Step("mark_running", _mark_running, _mark_standby),
)


async def restore(
    core: InstanceCore,
    jobs: BackgroundJobs,
    network: GuestNetworks | None,
    instance_id: str,
    *,
    steps: Sequence[Step] = RESTORE_STEPS,
) -> InstanceRecord:
    """Standby -> Running from the instance's saved VM (takes the instance's lock)."""
    async with core.lock(instance_id):
        record = core.current(instance_id)
        if record.state != State.STANDBY or record.standby is None:
            raise invalid(record, "restore", "only an instance in Standby can be restored")
        admit(core, record)
        started = time.monotonic()
        await await_vmm_exit(jobs, instance_id)  # a standby just taken: its VMM goes first
        lease = network.lease(instance_id) if network is not None else None
        foreign = lease if record.standby.foreign_network else None
        copy = record.standby.foreign_identity or foreign is not None
        run = Restoring(core, jobs, record, record.standby, foreign, network)
        await _run_steps(run, steps)
        core.event(instance_id, f"restored in {time.monotonic() - started:.3f} s")
        discard_saved(core, instance_id)
        if copy:
            await claim_identity(core, network, instance_id, run.lease,
                                 resume_workload=run.saved.workload_stopped)  # fmt: skip
    if not record.skip_guest_agent:
        _set_clock_later(core, jobs, instance_id)
    return core.current(instance_id)


async def _run_steps(run: Restoring, steps: Sequence[Step]) -> None:
    done: list[Step] = []
    try:
        for step in steps:
            done.append(step)  # a step that fails halfway is undone too (undos are idempotent)
            await step.run(run)
    except BaseException as exc:
        for step in reversed(done):
            if step.undo is not None:
                try:
                    await step.undo(run)
                except Exception:
                    log.exception("restore: undoing %s failed", step.name)
        why = exc.message if isinstance(exc, EmberError) else str(exc) or type(exc).__name__
        message = f"restore failed, the saved VM is kept: {why}"
        run.core.update(run.record.id, lambda r: setattr(r, "state_error", message))
        run.core.event(run.record.id, message)
        if isinstance(exc, InvalidState):  # the saved VM cannot restore here: 409
            raise InvalidState(message) from exc
        if isinstance(exc, Exception):
            raise Unavailable(message) from exc
        raise


def discard_saved(core: InstanceCore, instance_id: str) -> None:
    """The VM runs on: its saved state (and a compressed payload) is stale now."""
    shutil.rmtree(core.paths(instance_id).saved_dir, ignore_errors=True)
    core.update(instance_id, lambda r: setattr(r, "standby", None))


def _set_clock_later(core: InstanceCore, jobs: BackgroundJobs, instance_id: str) -> None:
    async def job(_: threading.Event) -> None:
        await set_clock(core, instance_id)

    jobs.start(f"clock:{instance_id}", job)


def _booted_with(saved: SavedVM) -> BootArtifacts:
    return BootArtifacts(
        kernel=Path(saved.kernel),
        initrd=Path(saved.initrd),
        kernel_version="",
        initrd_hash="",
        cmdline=saved.cmdline,
    )
