"""Following a booted VM: its agent's READY and exit, the VMM's exit, and adoption.

One monitor task per boot owns the agent connection (QEMU's agent socket takes
one client at a time). It turns READY into Running, the workload's exit into
`exit_code`/`exit_message`, and the VMM's exit into Stopped, after which the
boot's resources (sockets, TAP, ...) are let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from ember.errors import EmberError
from ember.guest.client import AgentClient, AgentDisconnected, AgentStatus
from ember.guest.config import read_exit_record
from ember.hypervisor import VMHandle
from ember.instances import phases, stopreason
from ember.instances.core import AGENT_CONNECT_TIMEOUT, InstanceCore
from ember.instances.logs import LogSource
from ember.instances.models import InstanceRecord
from ember.instances.state import ACTIVE, State

log = logging.getLogger("ember.instances")
# How long the first agent answer may take (a slow boot); the VMM's exit ends it sooner.
AGENT_READY_TIMEOUT = 600.0


def watch(core: InstanceCore, record: InstanceRecord, handle: VMHandle) -> None:
    core.monitors.spawn(record.id, _monitor(core, record, handle))


async def _monitor(core: InstanceCore, record: InstanceRecord, handle: VMHandle) -> None:
    """Follow one boot of a VM until its VMM exits."""
    agent_task = None
    if record.skip_guest_agent:
        if record.state == State.INITIALIZING:
            phases.mark(core, record.id, "workload")
            core.transition(record.id, State.RUNNING, "no guest agent to wait for")
    else:
        agent_task = core.helpers.spawn(
            f"agent:{record.id}", _follow_agent(core, record.id, handle)
        )
    try:
        await core.hypervisor(record).wait_exit(handle)
    finally:
        if agent_task is not None:
            agent_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, EmberError):
                await agent_task
        agent = core.agents.pop(record.id, None)
        if agent is not None:
            await agent.close()
    await finish_stop(core, record.id)


async def _follow_agent(core: InstanceCore, instance_id: str, handle: VMHandle) -> None:
    try:
        agent = await AgentClient.connect(handle.agent_socket, timeout=AGENT_CONNECT_TIMEOUT)
    except EmberError as exc:
        message = exc.message
        core.update(instance_id, lambda r: setattr(r, "state_error", message))
        return
    core.agents[instance_id] = agent
    measuring: asyncio.Task[None] | None = None
    try:
        # The first answer through the agent: kernel, init and agent are up.
        with contextlib.suppress(EmberError, TimeoutError):
            await agent.ping(timeout=AGENT_READY_TIMEOUT)
            phases.mark(core, instance_id, "guest")
        status = await agent.wait_ready()
        if core.current(instance_id).state == State.INITIALIZING:
            phases.mark(core, instance_id, "workload")
            core.transition(instance_id, State.RUNNING, f"workload {status.state}")
            measure = phases.measure_guest(core, instance_id, agent)
            measuring = core.helpers.spawn(f"measure:{instance_id}", measure)
        status = await agent.wait_exit()
    except AgentDisconnected:
        return  # the VM is going away; the exit record on the config disk tells the rest
    finally:
        if measuring is not None:
            measuring.cancel()
    core.update(instance_id, lambda r: _exited(r, status))


def _exited(record: InstanceRecord, status: AgentStatus) -> None:
    record.exit_code, record.exit_message = status.exit_code, status.message


async def finish_stop(core: InstanceCore, instance_id: str) -> None:
    """The VMM is gone: record how the workload ended, settle in Stopped, let go of the
    boot's resources. A VMM that a standby brought down leaves the instance in Standby."""
    paths = core.paths(instance_id)
    if core.current(instance_id).state == State.STANDBY:
        await _finish_standby(core, instance_id)
        return
    exit_record = read_exit_record(paths.config) if paths.config.exists() else None
    requested = instance_id in core.stopping
    record = core.current(instance_id)
    exit_code, message = record.exit_code, record.exit_message
    killed = None if requested else core.resources.exit_reason(record)
    signal = 0
    if exit_record is not None:
        exit_code, message, signal = exit_record.exit_code, exit_record.message, exit_record.signal
    elif killed is not None:
        message = killed
    elif exit_code is None and not requested:
        message = "the VMM exited before the workload reported an exit"
    asked = record.stop_reason
    forced = asked is not None and bool(asked & stopreason.StopReason.FORCED)
    reason = stopreason.ended(asked, forced=forced, exit_code=exit_code, signal=signal)
    if asked is not None:  # someone asked: say who first, then what the workload said
        why = stopreason.describe(reason, exit_code)
        message = f"{why} ({message})" if message else why
    fields: dict[str, object] = {"pid": None, "stopped_at": datetime.now(UTC)}
    fields |= {"exit_code": exit_code, "exit_message": message, "stop_reason": int(reason)}
    if record.state == State.STOPPED:
        record = core.update(instance_id, lambda r: _assign(r, fields))
    else:
        record = core.transition(instance_id, State.STOPPED, message or "no exit status", **fields)
    core.hypervisor(record).collect_output(paths.vmm_output, paths.log(LogSource.VMM))
    await core.resources.detach(record, paths)
    paths.memory.unlink(missing_ok=True)  # the guest RAM of a VM that will not come back


async def _finish_standby(core: InstanceCore, instance_id: str) -> None:
    """The saved VM's VMM is gone: the snapshot stays, the boot's resources go."""
    paths = core.paths(instance_id)
    record = core.update(instance_id, lambda r: setattr(r, "pid", None))
    core.hypervisor(record).collect_output(paths.vmm_output, paths.log(LogSource.VMM))
    await core.resources.detach(record, paths)


def _assign(record: InstanceRecord, fields: dict[str, object]) -> None:
    for key, value in fields.items():
        setattr(record, key, value)


async def await_monitor(core: InstanceCore, instance_id: str) -> None:
    """Wait until the monitor of the current boot has recorded Stopped."""
    task = core.monitors.get(instance_id)
    if task is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    elif core.current(instance_id).state != State.STOPPED:
        await finish_stop(core, instance_id)


async def adopt(core: InstanceCore, record: InstanceRecord) -> None:
    """After a server restart: follow a VMM still alive, settle one that is gone."""
    paths = core.paths(record.id)
    hypervisor = core.hypervisor(record)
    if record.state == State.STANDBY and record.pid is not None:
        # The server died between a standby's save and the end of its VMM: the state is
        # saved, so that (paused) VMM can go.
        await hypervisor.quit(paths.handle(record.pid))
        await finish_stop(core, record.id)
        return
    if record.state not in ACTIVE and record.state != State.UNKNOWN:
        return
    if record.pid is not None and hypervisor.is_alive(paths.handle(record.pid)):
        core.event(record.id, f"adopted running VMM (pid {record.pid}) after server restart")
        watch(core, record, paths.handle(record.pid))
    else:
        await finish_stop(core, record.id)


def mark_unknown(core: InstanceCore, instance_id: str, message: str) -> None:
    core.transition(instance_id, State.UNKNOWN, message, state_error=message)
