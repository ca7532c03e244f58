"""Standby: Running -> capture -> Standby -> VMM gone; compression later.

The instance keeps exactly one saved VM of its own (`saved.capture`, into its
own directory), under the instance's lock; the answer comes once the state is
on disk and recorded. The VMM quitting and the monitor letting go of the
boot's resources run after it in a keyed job (`vmm-exit:<id>`) that holds no
lock: a restore, a restore-into and a delete wait for it first
(`saved.await_vmm_exit`). Compression of the memory payload starts after that
(`saved.compress`, key `saved:<id>`) and a restore cancels it.

Failure: a save that fails resumes the VM and removes what it wrote; the
instance stays Running with the error in the log and the answer.
"""

from __future__ import annotations

import logging
import threading

from ember.errors import InvalidArgument, InvalidState
from ember.instances import stopreason
from ember.instances.core import InstanceCore, invalid
from ember.instances.models import InstanceRecord
from ember.instances.monitor import await_monitor
from ember.instances.saved.capture import capture_saved_vm
from ember.instances.saved.compress import start_compression
from ember.instances.saved.slots import instance_slot, vmm_exit_key
from ember.instances.state import State
from ember.instances.stopreason import StopOrigin
from ember.snapshots.compression import Compression, CompressionConfig, parse_default
from ember.snapshots.models import SavedVM
from ember.tasks import BackgroundJobs
from ember.units import format_size, parse_duration

log = logging.getLogger("ember.instances")


def choose_compression(
    core: InstanceCore,
    record: InstanceRecord,
    requested: CompressionConfig | None,
    delay: str | None,
) -> tuple[Compression | None, float]:
    """Request > the instance's `snapshot_policy` > the server default, for both the
    compression and its delay; InvalidArgument naming the field."""
    policy = record.snapshot_policy
    if requested is not None:
        compression = requested.resolve("compression")
    elif policy is not None and policy.compression is not None:
        compression = policy.compression.resolve("snapshot_policy.compression")
    else:
        compression = parse_default(core.settings.snapshot_compression)
    if delay is not None:
        seconds = parse_duration(delay, field="compression_delay")
    elif policy is not None and policy.standby_compression_delay:
        field = "snapshot_policy.standby_compression_delay"
        seconds = parse_duration(policy.standby_compression_delay, field=field)
    else:
        seconds = core.settings.snapshot_compression_delay_seconds
    if seconds < 0:
        raise InvalidArgument("compression_delay: must not be negative")
    return compression, seconds


STANDBY_MESSAGE: dict[StopOrigin, str] = {
    "user": "put in standby by the user",
    "platform": "scaled to zero by the platform (standby, memory kept)",
}


async def standby(
    core: InstanceCore,
    jobs: BackgroundJobs,
    instance_id: str,
    *,
    compression: CompressionConfig | None = None,
    compression_delay: str | None = None,
    origin: StopOrigin = "user",
) -> InstanceRecord:
    """Save the VM into the instance's directory and answer; its VMM goes in a background
    job (`vmm-exit:<id>`, no lock held) that a restore or delete waits for."""
    async with core.lock(instance_id):
        record = core.current(instance_id)
        if record.state not in (State.RUNNING, State.PAUSED):
            raise invalid(record, "put in standby", "only a Running or Paused instance can")
        hypervisor = core.hypervisor(record)
        if not hypervisor.capabilities.snapshot:
            raise InvalidState(f"the {hypervisor.name} hypervisor cannot save a VM's memory")
        if record.pid is None:
            raise invalid(record, "put in standby", "its VMM is not known")
        chosen, delay = choose_compression(core, record, compression, compression_delay)
        saved = await capture_saved_vm(core, record, core.paths(instance_id), resume=False)
        record = core.transition(
            instance_id, State.STANDBY, _describe(saved), standby=saved,
            stop_reason=int(stopreason.standby(origin)), exit_message=STANDBY_MESSAGE[origin],
        )  # fmt: skip
        handle = core.paths(instance_id).handle(record.pid or 0)

    async def let_the_vmm_go(_: threading.Event) -> None:
        # The VMM has nothing left to do; the monitor sees Standby, keeps the saved VM and
        # lets go of the boot's resources. ~10 ms a caller need not wait for.
        await hypervisor.quit(handle)
        await await_monitor(core, instance_id)
        if chosen is not None:
            start_compression(jobs, instance_slot(core, instance_id), chosen, delay)

    jobs.start(vmm_exit_key(instance_id), let_the_vmm_go)
    return record


def _describe(saved: SavedVM) -> str:
    where = "RAM kept in its file" if saved.memory_in_file else "RAM streamed"
    return (
        f"saved {format_size(saved.state_bytes)} of VM state, {where} "
        f"({format_size(saved.memory_bytes)} of memory)"
    )
