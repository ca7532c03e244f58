"""At server start: make every record agree with the VMM processes that really run.

A server killed with SIGKILL can leave a VMM the records do not describe:
- a save cut short (standby, or the first step of a fork `from_running`): the
  record still says Running, but QEMU keeps the guest paused by the migration;
- a restore cut short (a plain restore, or a fork's first restore): the record
  says Standby, but a VMM started for it, untracked (no pid in the record);
- a restore that got as far as Running but not as far as dropping the saved VM.

`reconcile` runs before the monitors adopt the VMMs. Per record it asks the
live VMM its run state and resumes a guest that a save left paused, adopts a
restored guest that already runs (its disks and memory moved on, so the saved
VM is stale), and kills a VMM whose restore had not resumed it yet (the saved
VM is intact: the record's Standby is true again). Then every VM process of
this data dir that no record explains is killed: VMMs are found by their
command line naming both `<data_dir>/instances/<id>/` (its console log: no
other server's data dir shares it) and `<runtime_dir>/<id>/` (its QMP socket:
an operator's `tail -f` of a log names only the first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from ember.errors import EmberError
from ember.guest.client import AgentClient
from ember.hypervisor import RunState, VMHandle
from ember.instances.core import InstanceCore
from ember.instances.layout import Layout
from ember.instances.models import InstanceRecord
from ember.instances.state import ACTIVE, State

log = logging.getLogger("ember.instances")
KILL_TIMEOUT = 10.0
NUDGE_TIMEOUT = 2.0


def processes_of(layout: Layout) -> dict[str, list[int]]:
    """Pids of the live VMM processes of this data dir, by instance id: their command line
    names a path in the instance's directory and one in its runtime directory."""
    prefix = str(layout.instances_dir).rstrip("/").encode() + b"/"
    runtime = str(layout.runtime_dir).rstrip("/").encode() + b"/"
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if prefix not in cmdline or not _alive(int(entry.name)):
            continue
        instance_id = cmdline.split(prefix, 1)[1].split(b"/", 1)[0].split(b"\0", 1)[0]
        if runtime + instance_id + b"/" not in cmdline:
            continue
        found.setdefault(instance_id.decode(errors="replace"), []).append(int(entry.name))
    return found


async def kill_processes(pids: list[int], timeout: float = KILL_TIMEOUT) -> None:
    """SIGKILL each, then wait (bounded) until they are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def end_instance_processes(core: InstanceCore, instance_id: str) -> None:
    """Kill every process still working in an instance's directory (a delete's last word:
    a VMM started by a server that died before recording it)."""
    pids = processes_of(core.layout).get(instance_id, [])
    if pids:
        core.event(instance_id, f"killing processes left in its directory: {pids}")
        await kill_processes(pids)


async def reconcile(core: InstanceCore) -> None:
    """Settle every record against the live VMMs, then kill the processes none explains."""
    processes = processes_of(core.layout)
    for record in core.repo.all():
        found = processes.pop(record.id, [])
        try:
            await _reconcile_one(core, record, found)
        except (EmberError, OSError) as exc:
            log.warning("cannot reconcile: %s", exc, extra={"instance": record.id})
            _set_error(core, record.id, f"cannot reconcile the VM after a server restart: {exc}")
    for instance_id, orphans in processes.items():
        log.info("killing VM processes no instance explains: %s (%s)", orphans, instance_id)
        await kill_processes(orphans)


async def _reconcile_one(core: InstanceCore, record: InstanceRecord, pids: list[int]) -> None:
    paths = core.paths(record.id)
    hypervisor = core.hypervisor(record)
    tracked = record.pid
    if tracked is not None and not hypervisor.is_alive(paths.handle(tracked)):
        tracked = None
    if tracked is None and record.state == State.STANDBY:
        tracked = await _settle_cut_restore(core, record, pids)
        record = core.current(record.id)
    elif tracked is not None and record.state in ACTIVE:
        await _resume_paused(core, record, tracked)
    if tracked is not None and record.state == State.RUNNING and record.standby is not None:
        _drop_stale_saved_vm(core, record.id)
    untracked = [pid for pid in pids if pid != tracked]
    if untracked:
        core.event(record.id, f"after a server restart: killing VM processes {untracked} "
                              "that its record does not explain")  # fmt: skip
        await kill_processes(untracked)
        if record.state in (State.STANDBY, State.STOPPED) and tracked is None:
            await core.resources.detach(record, paths)  # what the cut-short boot attached


async def _resume_paused(core: InstanceCore, record: InstanceRecord, pid: int) -> None:
    """A Running record whose guest a cut-short save left paused: resume it."""
    if record.state not in (State.RUNNING, State.INITIALIZING):
        return
    handle = core.paths(record.id).handle(pid)
    hypervisor = core.hypervisor(record)
    if await hypervisor.run_state(handle) == RunState.PAUSED:
        await hypervisor.resume(handle)
        for partial in core.paths(record.id).saved_dir.glob("*.partial"):
            partial.unlink(missing_ok=True)
        core.event(record.id, "resumed the VM a save cut short by a server restart had paused")
        if not record.skip_guest_agent:
            await _reopen_agent_port(handle)


async def _settle_cut_restore(
    core: InstanceCore, record: InstanceRecord, pids: list[int]
) -> int | None:
    """A Standby record with an untracked VMM of a restore cut short. One whose guest runs
    already is adopted (Running; its saved VM is stale now); any other is left to be
    killed (the saved VM is intact, so Standby holds). Returns the adopted pid."""
    paths = core.paths(record.id)
    hypervisor = core.hypervisor(record)
    for pid in pids:
        vmm = paths.handle(pid)
        if not hypervisor.is_alive(vmm):
            continue
        with contextlib.suppress(EmberError, OSError):
            if await hypervisor.run_state(vmm) == RunState.RUNNING:
                note = "adopted the VM of a restore cut short by a server restart"
                saved = record.standby
                base = saved.memory_base if saved is not None else None  # a clone's template
                core.transition(record.id, State.RUNNING, note, pid=pid, memory_base=base)
                _drop_stale_saved_vm(core, record.id)
                if not record.skip_guest_agent:
                    await _reopen_agent_port(vmm)
                if saved is not None and (saved.foreign_network or saved.foreign_identity):
                    message = ("the restore of this fork was cut short by a server restart "
                               "before its guest took its own identity (random state, "
                               "machine-id, network): restart it to get them")  # fmt: skip
                    _set_error(core, record.id, message)
                return pid
    return None


async def _reopen_agent_port(handle: VMHandle) -> None:
    """Open and close one agent connection before the monitor opens its own.

    The killed server's connection ended while its guest was paused; after the resume,
    the guest's port went on refusing the next connection (no HELLO_ACK, not even after
    the client's resync). One connection opened and closed makes QEMU tell the guest
    both events again, and the monitor's connection then works. Measured here: without
    it the first connection failed in 4 of 4 runs, with it none did."""
    with contextlib.suppress(EmberError, OSError, TimeoutError):
        client = await AgentClient.connect(handle.agent_socket, timeout=NUDGE_TIMEOUT)
        try:
            with contextlib.suppress(EmberError, TimeoutError):
                await client.ping(timeout=NUDGE_TIMEOUT)
        finally:
            await client.close()


def _set_error(core: InstanceCore, instance_id: str, message: str) -> None:
    core.update(instance_id, lambda r: setattr(r, "state_error", message))


def _drop_stale_saved_vm(core: InstanceCore, instance_id: str) -> None:
    """The VM runs on: its saved state no longer matches its disks and memory."""
    shutil.rmtree(core.paths(instance_id).saved_dir, ignore_errors=True)
    core.update(instance_id, lambda r: setattr(r, "standby", None))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
