"""Create: validate the whole request into a plan, then acquire, insert and boot.

Order matters for "nothing half-made": the plan refuses bad input before any
side effect; the record is inserted first (state Created) so a server killed
mid-create finds it at the next start and undoes it; the instance's lock is
held from the insert on, so a racing delete waits for the create to finish.
"""

from __future__ import annotations

import logging

from ember.errors import Conflict
from ember.ids import new_id
from ember.instances import phases
from ember.instances.admission import admit
from ember.instances.boot import boot
from ember.instances.core import InstanceCore
from ember.instances.delete import discard
from ember.instances.models import InstanceRecord
from ember.instances.plan import plan_create
from ember.instances.request import CreateInstanceRequest

log = logging.getLogger("ember.instances")


async def create(
    core: InstanceCore, request: CreateInstanceRequest, *, shareable_memory: bool = False
) -> InstanceRecord:
    began = phases.now()
    image = core.images.get(request.image)
    core.images.rootfs_path(image)  # refuses images that are not ready
    image_ready = phases.now()
    the_plan = plan_create(
        request,
        instance_id=new_id(),
        image=image,
        hypervisors=core.hypervisors,
        limits=core.limits,
        networking=core.networking,
    )
    record = the_plan.record
    record.shareable_memory = shareable_memory
    if core.repo.by_name(record.name) is not None:
        raise Conflict(f"instance {record.name!r} already exists", code="already_exists")
    core.resources.check(the_plan)
    admit(core, record)
    core.system()  # the guest kernel and initrd are there
    paths = core.paths(record.id)
    async with core.lock(record.id):
        core.repo.insert(record)
        core.event(record.id, f"creating from image {record.image} ({record.image_digest})")
        phases.begin(core, record.id, began, (("image", image_ready),))
        try:
            await core.resources.acquire(the_plan, paths)
            record = await boot(core, core.current(record.id), fresh_phases=False)
        except BaseException as exc:
            log.warning("create failed, cleaning up", extra={"instance": record.id, "error": exc})
            await discard(core, core.repo.get(record.id) or record)
            core.locks.pop(record.id, None)
            raise
    return core.current(record.id)
