"""Start: boot a Stopped instance again, optionally with a new cmd/entrypoint."""

from __future__ import annotations

from ember.instances.admission import admit
from ember.instances.boot import boot
from ember.instances.core import InstanceCore, invalid
from ember.instances.models import InstanceRecord
from ember.instances.plan import guest_config
from ember.instances.restarts import owner_started
from ember.instances.state import State


async def start(
    core: InstanceCore,
    instance_id: str,
    cmd: list[str] | None = None,
    entrypoint: list[str] | None = None,
    *,
    by_owner: bool = True,
) -> InstanceRecord:
    """`cmd`/`entrypoint` replace the instance's from now on, as in Hypeman. The owner's
    start (not the supervisor's restart) starts supervision over."""
    async with core.lock(instance_id):
        record = core.current(instance_id)
        if record.state != State.STOPPED:
            raise invalid(record, "start", "only a Stopped instance can start")
        updates = {k: v for k, v in (("cmd", cmd), ("entrypoint", entrypoint)) if v is not None}
        changed = record.model_copy(update=updates)
        guest_config(changed).to_record()  # refuses nothing to run, bad argv
        admit(core, changed)
        if updates:

            def run_with(r: InstanceRecord) -> None:
                r.cmd, r.entrypoint = changed.cmd, changed.entrypoint

            record = core.update(record.id, run_with)
        await boot(core, record)
        if by_owner:
            core.update(instance_id, owner_started)
    return core.current(instance_id)
