"""Restore: Standby -> the VMM started from the saved state -> Running.

Restore is the hot path: it stops a pending compression (the raw payload is
still there then), decompresses only a payload that was already compressed,
plugs the boot's resources back in, and asks the hypervisor to start from the
saved state with exactly the kernel, initrd and memory mode recorded at
standby. The config disk is not rewritten: the guest keeps the one it booted
with. The guest's wall clock lags by the time it spent saved; once the
monitor has the agent again, the agent is told the host's time.

Failure: the VMM is killed, the boot's resources let go, the saved state left
as it was (a VM on a memory file only writes it once it runs, after the
restore completed), and the instance stays in Standby with `state_error`.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ember.errors import EmberError, Unavailable
from ember.instances.admission import admit
from ember.instances.core import InstanceCore, invalid
from ember.instances.models import InstanceRecord, StandbySnapshot
from ember.instances.monitor import watch
from ember.instances.plan import vm_spec
from ember.instances.state import State
from ember.snapshots.compression import BackgroundJobs, decompress_file
from ember.system import BootArtifacts

log = logging.getLogger("ember.instances")
CLOCK_AGENT_TIMEOUT = 10.0


# Runs after the boot's resources are plugged in, before the VM resumes (a fork keeps its
# network quiet until it has its own address).
BeforeResume = Callable[[InstanceRecord], Awaitable[None]]


async def restore(
    core: InstanceCore,
    jobs: BackgroundJobs,
    instance_id: str,
    *,
    before_resume: BeforeResume | None = None,
) -> InstanceRecord:
    async with core.lock(instance_id):
        return await restore_locked(core, jobs, instance_id, before_resume=before_resume)


async def restore_locked(
    core: InstanceCore,
    jobs: BackgroundJobs,
    instance_id: str,
    *,
    before_resume: BeforeResume | None = None,
) -> InstanceRecord:
    """`restore` for a caller that holds the instance's lock already."""
    record = core.current(instance_id)
    if record.state != State.STANDBY or record.standby is None:
        raise invalid(record, "restore", "only an instance in Standby can be restored")
    admit(core, record)
    started = time.monotonic()
    await jobs.cancel(instance_id)  # a compression still running: the raw payload stays
    record = core.current(instance_id)
    assert record.standby is not None
    try:
        await _ensure_raw(core, record, record.standby)
        record = await _start_from_saved(core, record, record.standby, before_resume)
    except EmberError as exc:
        message = f"restore failed, the snapshot is kept: {exc.message}"
        core.update(instance_id, lambda r: setattr(r, "state_error", message))
        core.event(instance_id, message)
        raise Unavailable(message) from exc
    core.event(instance_id, f"restored in {time.monotonic() - started:.3f} s")
    _discard_saved(core, instance_id)
    if not record.skip_guest_agent:
        asyncio.get_running_loop().create_task(_set_clock(core, instance_id))
    return core.current(instance_id)


async def restore_into_stopped(
    core: InstanceCore, instance_id: str, saved: StandbySnapshot
) -> InstanceRecord:
    """A Stopped instance whose layout holds a saved VM (a snapshot copied back, its lock
    held): Initializing -> Running from that state. On failure it is Stopped again with
    `state_error`, the saved VM removed (the snapshot keeps its own)."""
    record = core.transition(instance_id, State.INITIALIZING, "restoring a snapshot",
                             standby=saved)  # fmt: skip
    admit(core, record)
    try:
        record = await _start_from_saved(core, record, saved)
    except BaseException as exc:
        _discard_saved(core, instance_id)
        message = f"restore failed: {exc}"
        core.transition(instance_id, State.STOPPED, message)
        core.update(instance_id, lambda r: setattr(r, "state_error", message))
        if isinstance(exc, EmberError):
            raise Unavailable(f"restore failed: {exc.message}") from exc
        raise
    _discard_saved(core, instance_id)
    if not record.skip_guest_agent:
        asyncio.get_running_loop().create_task(_set_clock(core, instance_id))
    return core.current(instance_id)


async def _ensure_raw(core: InstanceCore, record: InstanceRecord, saved: StandbySnapshot) -> None:
    """Decompress the memory payload if only its compressed form is left."""
    paths = core.paths(record.id)
    raw = paths.standby_payload(saved.memory_in_file)
    if raw.exists() or saved.compression is None or saved.compression.algorithm is None:
        return
    compressed = paths.compressed(raw, saved.compression.algorithm)
    if not compressed.exists():
        raise Unavailable(f"the saved memory is missing: neither {raw} nor {compressed}")
    core.event(record.id, f"restore: decompressing {compressed.name}")
    await asyncio.to_thread(decompress_file, compressed, raw, saved.compression.algorithm)


async def _start_from_saved(
    core: InstanceCore,
    record: InstanceRecord,
    saved: StandbySnapshot,
    before_resume: BeforeResume | None = None,
) -> InstanceRecord:
    paths = core.paths(record.id)
    hypervisor = core.hypervisor(record)
    rootfs = core.images.rootfs_of(record.image_digest)
    devices = await core.resources.attach(record, paths)
    try:
        if before_resume is not None:
            await before_resume(record)
        paths.run.mkdir(parents=True, exist_ok=True)
        spec = vm_spec(
            record, paths, _booted_with(saved), rootfs, devices,
            memory_in_file=saved.memory_in_file,
        )  # fmt: skip
        handle = await hypervisor.restore(spec, paths.standby_state)
    except BaseException:
        await core.resources.detach(record, paths)
        raise
    record = core.transition(record.id, State.RUNNING, "restored from standby", pid=handle.pid,
        stop_reason=None, exit_message=None,
    )  # fmt: skip
    watch(core, record, handle)
    return record


def _booted_with(saved: StandbySnapshot) -> BootArtifacts:
    return BootArtifacts(
        kernel=Path(saved.kernel),
        initrd=Path(saved.initrd),
        kernel_version="",
        initrd_hash="",
        cmdline=saved.cmdline,
    )


def _discard_saved(core: InstanceCore, instance_id: str) -> None:
    """The VM runs on: its saved state (and a compressed payload) is stale now."""
    shutil.rmtree(core.paths(instance_id).standby, ignore_errors=True)
    core.update(instance_id, lambda r: setattr(r, "standby", None))


async def _set_clock(core: InstanceCore, instance_id: str) -> None:
    """Tell the guest the time once the monitor holds its agent again."""
    deadline = time.monotonic() + CLOCK_AGENT_TIMEOUT
    while (agent := core.agents.get(instance_id)) is None:
        if time.monotonic() > deadline or instance_id not in core.monitors:
            core.event(instance_id, "restore: the agent did not come back; clock not set")
            return
        await asyncio.sleep(0.01)
    try:
        await agent.set_time()
    except (EmberError, OSError, TimeoutError) as exc:
        core.event(instance_id, f"restore: cannot set the guest clock: {exc}")
        return
    core.event(instance_id, "restore: guest clock set")
