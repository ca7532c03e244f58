"""Templates: a VM booted once, run until ready, then saved and frozen for cloning.

A template is a named Standby snapshot flagged `template` (ember/snapshots), so a
clone is `fork_snapshot` (the one fork path, and the one restore after it). What a
template adds: its builder boots with `shareable_memory` (its RAM in a file, free
page reporting off), so its clones map that file copy-on-write instead of copying
it, and the builder is deleted once saved (the template outlives it). Every clone
is made unique at its first restore (`saved.identity.claim_identity`).

    create:          validate -> boot a builder (shareable) -> wait Running -> readiness
                     -> from_instance
    from_instance:   Standby snapshot of a Running instance, flagged template -> delete
                     the instance (on failure: the snapshot goes, the instance stays)
    clone:           fork_snapshot(template, name) -> Running
    delete:          refused (409 in_use) while a clone maps its memory
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from ember.errors import Conflict, EmberError, InvalidArgument, NotFound, Unavailable
from ember.ids import is_id, new_id
from ember.instances import InstanceManager, State
from ember.instances.models import InstanceRecord
from ember.instances.request import CreateInstanceRequest
from ember.snapshots.models import SnapshotRecord
from ember.store.lookup import find_one
from ember.templates.models import CreateTemplateRequest, Readiness
from ember.units import parse_duration
from ember.validation import validate_name

__all__ = ["Templates"]

log = logging.getLogger("ember.templates")
BUILDER_PREFIX = "template-build-"


class Templates:
    """The templates of this server (the manager the API and the /v1 mapping use)."""

    def __init__(self, instances: InstanceManager) -> None:
        self.instances = instances
        self.snapshots = instances.snapshots

    # ---- queries -----------------------------------------------------------------------

    def all(self) -> list[SnapshotRecord]:
        """Oldest first."""
        return self.snapshots.store.find(template=True)

    def get(self, ref: str) -> SnapshotRecord:
        """By id, name or unique id prefix, among templates only."""
        store = self.snapshots.store

        def by_id(template_id: str) -> SnapshotRecord | None:
            found = store.find(snapshot_id=template_id, template=True)
            return found[0] if found else None

        return find_one(
            ref, "template", by_id=by_id,
            by_name=lambda name: store.find(name=name, template=True),
            by_id_prefix=lambda prefix: store.find(id_prefix=prefix, template=True),
        )  # fmt: skip

    def clones(self, template: SnapshotRecord) -> list[str]:
        """What maps the template's memory now (and so keeps it from being deleted)."""
        return self.snapshots.dependents(template.id)

    # ---- commands ----------------------------------------------------------------------

    async def create(self, request: CreateTemplateRequest) -> SnapshotRecord:
        """Boot a builder from the request's image, wait until it is ready, save it as the
        template `request.name`; the builder is gone either way."""
        name = self._check_name(request.name)
        readiness = request.readiness or Readiness()
        timeout = parse_duration(readiness.timeout, field="readiness.timeout")
        interval = parse_duration(readiness.interval, field="readiness.interval")
        writable = [v.mount_path for v in request.volumes or [] if not v.readonly]
        if writable:
            raise InvalidArgument(
                f"volumes: a template can only hold read-only volumes ({', '.join(writable)} "
                "is read-write: its contents would be shared by every clone)"
            )
        fields = request.model_dump(exclude={"readiness"}, exclude_unset=True)
        fields["name"] = f"{BUILDER_PREFIX}{new_id()[:12]}"
        builder_request = CreateInstanceRequest.model_validate(fields)
        builder = await self.instances.create(builder_request, shareable_memory=True)
        try:
            await self._await_ready(builder.id, readiness, timeout, interval)
            return await self.from_instance(builder.id, name)
        finally:
            with contextlib.suppress(NotFound):
                await self.instances.delete(builder.id)

    async def from_instance(self, ref: str, name: str | None = None) -> SnapshotRecord:
        """Save a Running instance as a template (named `name`, default the instance's) and
        delete the instance. Its clones share its memory only if it booted
        `shareable_memory` (as `create`'s builders do); otherwise each gets a copy."""
        record = self.instances.get(ref)
        name = self._check_name(name or record.name)
        if record.state != State.RUNNING:
            raise self.instances.not_running(record)
        stopped = await self._signal_workload(record, signal.SIGSTOP)
        try:
            template = await self.snapshots.create(
                record.id, "Standby", name=name, template=True, workload_stopped=stopped
            )
        except BaseException:
            if stopped:
                await self._signal_workload(record, signal.SIGCONT)
            raise
        try:
            await self.instances.delete(record.id)
        except BaseException:
            await self.snapshots.delete(template.id)
            raise
        log.info("template %s (%s) saved from %s", name, template.id, record.name)
        return template

    async def clone(
        self, ref: str, name: str, *, target: State | None = None
    ) -> InstanceRecord:  # fmt: skip
        """A new instance Running from the template's saved VM: its own id, name, disks,
        MAC, IP and hostname, its guest reseeded (the fork path)."""
        template = self.get(ref)
        return await self.instances.fork_snapshot(template.id, name, target or State.RUNNING,
                                                  None)  # fmt: skip

    async def delete(self, ref: str) -> None:
        """Refused (409 `in_use`) while clones map its memory (they have no copy of it)."""
        await self.snapshots.delete(self.get(ref).id)

    # ---- steps -------------------------------------------------------------------------

    def _check_name(self, name: str) -> str:
        validate_name(name)
        if is_id(name):
            raise InvalidArgument(f"name: {name!r} has the shape of an id")
        if self.snapshots.store.find(name=name, template=True):
            raise Conflict(f"template {name!r} already exists", code="already_exists")
        return name

    async def _await_ready(
        self, instance_id: str, readiness: Readiness, timeout: float, interval: float
    ) -> None:
        """Running (the agent said READY), then the readiness command exits 0."""
        deadline = time.monotonic() + timeout
        record, timed_out = await self.instances.wait(instance_id, State.RUNNING, timeout)
        if timed_out or record.state != State.RUNNING:
            why = record.exit_message or record.state_error or f"it is {record.state}"
            raise Unavailable(f"the template's VM did not become ready in {timeout:g} s: {why}")
        if readiness.exec is None:
            return
        last = "not tried"
        while time.monotonic() < deadline:
            last = await self._probe(instance_id, readiness.exec) or ""
            if not last:
                return
            await asyncio.sleep(interval)
        raise Unavailable(f"the template's readiness command did not pass in {timeout:g} s: {last}")

    async def _signal_workload(self, record: InstanceRecord, signum: int) -> bool:
        """Stop (or continue) the workload's process group before the save, so that a
        clone's program goes on only once its CRNG is reseeded; False where it cannot
        (no agent, a systemd workload: its services are in sessions of their own)."""
        if record.skip_guest_agent:
            return False
        try:
            _, agent = self.instances.agent(record.id)
            await agent.signal(signum, group=True)
        except EmberError as exc:
            log.info("template from %s: workload not stopped: %s", record.name, exc)
            return False
        return True

    async def _probe(self, instance_id: str, argv: list[str]) -> str | None:
        """None when `argv` exits 0 in the guest, else why not."""
        try:
            _, agent = self.instances.agent(instance_id)
            session = await agent.exec(argv)
            result, _, stderr = await session.wait()
        except EmberError as exc:
            return exc.message
        if result.exit_code == 0:
            return None
        return f"exit code {result.exit_code}: {stderr.decode(errors='replace').strip()}"
