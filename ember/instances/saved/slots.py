"""An instance's own saved VM (its standby) as a `SavedSlot`."""

from __future__ import annotations

from collections.abc import Callable

from ember.instances.core import InstanceCore
from ember.instances.models import InstanceRecord
from ember.instances.saved.compress import SavedSlot
from ember.instances.state import State
from ember.snapshots.models import SavedVM
from ember.tasks import BackgroundJobs

__all__ = ["await_vmm_exit", "cancel_instance_jobs", "instance_slot", "vmm_exit_key"]


def instance_slot(core: InstanceCore, instance_id: str) -> SavedSlot:
    def read() -> SavedVM | None:
        record = core.repo.get(instance_id)
        return record.standby if record is not None and record.state == State.STANDBY else None

    def change(edit: Callable[[SavedVM], SavedVM]) -> None:
        def apply(record: InstanceRecord) -> None:
            if record.standby is not None:
                record.standby = edit(record.standby)

        core.update(instance_id, apply)

    return SavedSlot(
        key=f"saved:{instance_id}",
        files=core.paths(instance_id),
        lock=core.lock(instance_id),
        read=read,
        change=change,
        event=lambda message: core.event(instance_id, message),
    )


def vmm_exit_key(instance_id: str) -> str:
    """The job in which a standby's VMM quits and the monitor lets go of its boot."""
    return f"vmm-exit:{instance_id}"


async def await_vmm_exit(jobs: BackgroundJobs, instance_id: str) -> None:
    """Until the VMM of a standby just taken is gone (its TAP and sockets free)."""
    await jobs.wait(vmm_exit_key(instance_id))


async def cancel_instance_jobs(jobs: BackgroundJobs, instance_id: str) -> None:
    """Before an instance's files go: its standby's VMM gone, then what else runs in the
    background for it (its compression, its clock) stopped."""
    await await_vmm_exit(jobs, instance_id)
    await jobs.cancel(f"saved:{instance_id}")
    await jobs.cancel(f"clock:{instance_id}")
