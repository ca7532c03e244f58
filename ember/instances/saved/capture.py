"""Capturing a running (or paused) VM as a saved VM: pause, save, then resume or not.

Used by standby (into the instance's own directory; the VM stays paused and
its VMM quits) and by a Standby snapshot of a running VM (into the snapshot's
directory; the RAM file and disks are copied while the VM is paused, then it
resumes: pause-copy-resume, measured in ember/snapshots/README.md).

A VM booted on a memory file (x-ignore-shared) leaves its RAM in that file and
the stream is only device state (~60 KB); a VM without one streams all its RAM.
Everything a restore needs (memory mode, kernel, initrd, command line, device
set) is decided now and kept in the `SavedVM`.

Failure: what was written goes, a VM that was running is resumed, and the
error says the VM runs on (Unavailable).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Awaitable, Callable

from ember.errors import EmberError, Unavailable
from ember.instances.core import InstanceCore
from ember.instances.models import InstanceRecord
from ember.instances.state import State
from ember.snapshots.compression import allocated_bytes
from ember.snapshots.layout import SavedVMFiles
from ember.snapshots.models import SavedVM

__all__ = ["capture_saved_vm"]

WhilePaused = Callable[[bool], Awaitable[None]]  # gets memory_in_file


async def capture_saved_vm(
    core: InstanceCore,
    record: InstanceRecord,
    dst: SavedVMFiles,
    *,
    while_paused: WhilePaused | None = None,
    resume: bool,
) -> SavedVM:
    """Save the VM of `record` (its lock held) into `dst`; run `while_paused` before it
    goes on; resume it after when `resume` (and it was Running)."""
    paths = core.paths(record.id)
    hypervisor = core.hypervisor(record)
    handle = paths.handle(record.pid or 0)
    system = core.system()
    memory_in_file = paths.memory.exists()  # only a VM booted on the file has it
    # A clone maps a template's RAM copy-on-write: its RAM is streamed (a private mapping
    # is never skipped), with the same migration setting as any VM on a memory file.
    on_file = memory_in_file or record.memory_base is not None
    was_running = record.state == State.RUNNING
    shutil.rmtree(dst.saved_dir, ignore_errors=True)
    dst.saved_dir.mkdir(parents=True)
    core.event(record.id, f"pausing and saving the VM into {dst.dir.name}")
    try:
        state = await hypervisor.save(handle, dst.vmstate, memory_file=on_file)
        if while_paused is not None:
            await while_paused(memory_in_file)
    except BaseException as exc:
        shutil.rmtree(dst.saved_dir, ignore_errors=True)
        if was_running:
            with contextlib.suppress(EmberError, OSError):
                await hypervisor.resume(handle)
        core.event(record.id, f"save failed, VM resumed: {exc}")
        if isinstance(exc, EmberError):
            raise Unavailable(f"saving the VM failed, it runs on: {exc.message}") from exc
        raise
    if resume and was_running:
        try:
            await hypervisor.resume(handle)
        except (EmberError, OSError) as exc:
            core.event(record.id, f"cannot resume the VM: {exc}")
            raise Unavailable(f"the VM did not resume after the save: {exc}") from exc
    return SavedVM(
        memory_in_file=memory_in_file,
        state_bytes=state.bytes,
        memory_bytes=allocated_bytes(dst.payload(memory_in_file)),
        devices=record.vm_devices,
        kernel=str(system.kernel),
        initrd=str(system.initrd),
        cmdline=system.cmdline,
        memory_base=record.memory_base,
    )
