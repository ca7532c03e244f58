"""Stop: SIGTERM to the workload through the agent, then force the VM off."""

from __future__ import annotations

import contextlib
import signal

from ember.errors import EmberError
from ember.instances.core import InstanceCore, invalid
from ember.instances.models import InstanceRecord
from ember.instances.monitor import await_monitor
from ember.instances.restarts import owner_stopped, restart_pending
from ember.instances.state import ACTIVE, State
from ember.instances.stopreason import StopOrigin, StopReason, requested


async def stop(
    core: InstanceCore, instance_id: str, *, origin: StopOrigin = "user"
) -> InstanceRecord:
    """A stop is never undone by the supervisor; on a Stopped instance waiting for a
    restart it cancels that restart. `origin` goes into the stop reason."""
    async with core.lock(instance_id):
        record = core.current(instance_id)
        if record.state == State.STOPPED and restart_pending(record):
            return core.update(instance_id, owner_stopped)
        if record.state not in ACTIVE:
            raise invalid(record, "stop", "it is not running")
        # Before the VM goes down: the supervisor must never undo a manual stop, even
        # if this server dies before the monitor has recorded Stopped. Who asked is
        # recorded now too; the monitor adds how it ended (stopreason.py).
        core.update(instance_id, lambda r: _stopped_by(r, requested(origin)))
        await shutdown(core, record, graceful=True)
    return core.current(instance_id)


async def shutdown(core: InstanceCore, record: InstanceRecord, *, graceful: bool) -> None:
    """Bring the VMM down and wait until the monitor has recorded Stopped.

    Graceful: SIGTERM to the workload, wait `stop_timeout_seconds`, then QMP
    `quit` (which the hypervisor follows with SIGKILL if need be).
    """
    paths = core.paths(record.id)
    hypervisor = core.hypervisor(record)
    handle = paths.handle(record.pid or 0)
    core.stopping.add(record.id)
    try:
        agent = core.agents.get(record.id)
        if graceful and agent is not None and record.state != State.PAUSED:
            core.event(record.id, "stop: SIGTERM to the workload")
            with contextlib.suppress(EmberError, OSError):
                await agent.signal(signal.SIGTERM)
            timeout = core.settings.stop_timeout_seconds
            if await hypervisor.wait_exit(handle, timeout=timeout):
                await await_monitor(core, record.id)
                return
            core.event(record.id, "stop: timed out, forcing the VM off")
        core.update(record.id, _forced)
        await hypervisor.quit(handle)
        await await_monitor(core, record.id)
    finally:
        core.stopping.discard(record.id)


def _stopped_by(record: InstanceRecord, asked: StopReason) -> None:
    owner_stopped(record)
    record.stop_reason = int(asked)


def _forced(record: InstanceRecord) -> None:
    record.stop_reason = (record.stop_reason or 0) | StopReason.FORCED
