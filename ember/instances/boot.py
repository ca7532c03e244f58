"""One boot of an instance: Created/Stopped -> Initializing, shared by create and start."""

from __future__ import annotations

from ember.guest.config import write_config_disk
from ember.instances import phases
from ember.instances.core import InstanceCore
from ember.instances.models import InstanceRecord
from ember.instances.monitor import watch
from ember.instances.plan import guest_config, keeps_memory_in_file, vm_spec
from ember.instances.state import State


async def boot(
    core: InstanceCore, record: InstanceRecord, *, fresh_phases: bool = True
) -> InstanceRecord:
    """Plug in what the instance holds, write its config disk and start the VMM.
    `fresh_phases`: this boot starts its phase clock (a create started it already)."""
    began = phases.now()
    paths = core.paths(record.id)
    system = core.system()
    rootfs = core.images.rootfs_of(record.image_digest)
    hypervisor = core.hypervisor(record)
    if fresh_phases:
        phases.begin(core, record.id, began, (("image", phases.now()),))
    devices = await core.resources.attach(record, paths)
    try:
        write_config_disk(paths.config, guest_config(record, devices))
        phases.mark(core, record.id, "disks")
        paths.run.mkdir(parents=True, exist_ok=True)
        memory_in_file = keeps_memory_in_file(record, core.settings.guest_memory_file)
        spec = vm_spec(record, paths, system, rootfs, devices, memory_in_file=memory_in_file)
        core.event(record.id, f"starting {hypervisor.name} VMM ({system.kernel_version})")
        handle = await hypervisor.start(spec)
    except BaseException:
        await core.resources.detach(record, paths)
        raise
    vmm_started = phases.now()
    phases.mark(core, record.id, "vmm", vmm_started)
    core.event(record.id, f"VMM running (pid {handle.pid})")
    record = core.transition(
        record.id,
        State.INITIALIZING,
        pid=handle.pid,
        started_at=vmm_started,
        stopped_at=None,
        exit_code=None,
        exit_message=None,
        vm_devices=hypervisor.device_set(spec),
        stop_reason=None,
        memory_base=None,
    )
    watch(core, record, handle)
    return record
