"""An instance's own saved VM (its standby) as a `SavedSlot`."""

from __future__ import annotations

from collections.abc import Callable

from ember.instances.core import InstanceCore
from ember.instances.models import InstanceRecord
from ember.instances.saved.compress import SavedSlot
from ember.instances.state import State
from ember.snapshots.models import SavedVM
from ember.tasks import BackgroundJobs

__all__ = ["cancel_instance_jobs", "instance_slot"]


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


async def cancel_instance_jobs(jobs: BackgroundJobs, instance_id: str) -> None:
    """Stop what runs in the background for an instance (its compression, its clock)
    before its files go."""
    await jobs.cancel(f"saved:{instance_id}")
    await jobs.cancel(f"clock:{instance_id}")
