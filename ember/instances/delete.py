"""Delete: bring the VMM down, then remove the record and release all it held."""

from __future__ import annotations

from ember.instances.core import InstanceCore
from ember.instances.models import InstanceRecord
from ember.instances.reconcile import end_instance_processes
from ember.instances.stop import shutdown


async def delete(core: InstanceCore, instance_id: str, *, graceful: bool) -> None:
    async with core.lock(instance_id):
        record = core.current(instance_id)
        if record.pid is not None:
            await shutdown(core, record, graceful=graceful)
        await discard(core, core.current(instance_id))
    core.locks.pop(instance_id, None)


async def discard(core: InstanceCore, record: InstanceRecord) -> None:
    """Remove every trace of an instance: VMM, record, then its resources, last first.

    The record goes before the resources: a server killed in between leaves held
    resources without an instance, which the sweep at the next start releases;
    never a listed instance whose disks are gone.
    """
    paths = core.paths(record.id)
    # No pid in the record: the VMM may still have started (a create cut short).
    pid = record.pid or paths.read_pid()
    if pid is not None:
        hypervisor = core.hypervisor(record)
        handle = paths.handle(pid)
        hypervisor.kill(handle)  # only if it is alive and ours (is_alive checks)
        await hypervisor.wait_exit(handle, timeout=10)
    await end_instance_processes(core, record.id)  # a VMM a killed server never recorded
    core.monitors.cancel(record.id)
    agent = core.agents.pop(record.id, None)
    if agent is not None:
        await agent.close()
    core.repo.delete(record.id)
    core.changes.notify()
    await core.resources.detach(record, paths)
    await core.resources.release(record, paths)
