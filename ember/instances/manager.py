"""The instance manager: the public face of the instance core.

It resolves references, takes the per-instance lock and calls the operation
modules (`create`, `start`, `stop`, `delete`, `monitor`); readers never wait
for a lock. See README.md for the layout and where a new operation goes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from ember.errors import InvalidState, NotFound, Unavailable
from ember.guest.client import AgentClient
from ember.hypervisor.jail import Confinement
from ember.instances import (
    capacity,
    create,
    delete,
    monitor,
    mounts,
    reconcile,
    start,
    stop,
    update,
)
from ember.instances import fork as forking
from ember.instances import standby as standing
from ember.instances.autostandby import AutoStandby, Report
from ember.instances.core import InstanceCore, await_agent, invalid
from ember.instances.health import HealthMonitor, HealthStatus
from ember.instances.logs import LogSource, read_log
from ember.instances.models import InstanceRecord
from ember.instances.request import CreateInstanceRequest, UpdateInstanceRequest
from ember.instances.saved.restore import restore
from ember.instances.saved.slots import cancel_instance_jobs
from ember.instances.snapshot import Snapshots
from ember.instances.state import SETTLED, State
from ember.instances.stats import ProcessStats, process_stats
from ember.instances.stopreason import StopOrigin
from ember.network import Lease, NetworkManager
from ember.snapshots.compression import CompressionConfig
from ember.snapshots.models import ScheduleRecord, SnapshotKind, SnapshotRecord
from ember.snapshots.schedule import ScheduleRequest, plan_schedule
from ember.tasks import BackgroundJobs
from ember.volumes import Attachment, VolumeManager

log = logging.getLogger("ember.instances")


class InstanceManager:
    """The public face of the instance core; built by the composition root
    (`ember.server.build_instances`) from parts it does not construct itself."""

    def __init__(
        self,
        core: InstanceCore,
        *,
        jobs: BackgroundJobs,
        snapshots: Snapshots,
        network: NetworkManager | None,
        volumes: VolumeManager,
        health: HealthMonitor,
        auto_standby: AutoStandby,
        confinement: Confinement,
    ) -> None:
        """`network` is None when networking is off on this server."""
        self.core, self.jobs, self.snapshots = core, jobs, snapshots
        self.network, self.volumes = network, volumes
        self.health, self.auto_standby = health, auto_standby
        self.confinement = confinement  # what confines each VMM (GET /capabilities)

    # ---- server lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        """Undo creates cut short, adopt the VMs that kept running while the server was
        down, release what instances that no longer exist still hold, and tidy every
        saved VM (a compression cut short)."""
        core = self.core
        core.layout.ensure_roots()
        await reconcile.reconcile(core)  # records against the VMMs a killed server left
        for record in core.repo.all():
            try:
                if record.state == State.CREATED:  # the server died inside a create
                    await delete.discard(core, record)
                else:
                    await monitor.adopt(core, record)
            except Exception as exc:
                log.exception("cannot adopt instance", extra={"instance": record.id})
                message = f"cannot adopt the VM after a server restart: {exc}"
                monitor.mark_unknown(core, record.id, message)
        core.resources.sweep({r.id for r in core.repo.all()})
        self.snapshots.recover()

    async def close(self) -> None:
        """Server shutdown: let go of the VMs (they keep running) and their connections."""
        await self.jobs.close()  # a saved VM keeps its raw memory then
        await self.core.monitors.close()
        await self.core.helpers.close()

    # ---- queries ---------------------------------------------------------------------

    def get(self, ref: str) -> InstanceRecord:
        """By id, name or unique id prefix."""
        return self.core.repo.resolve(ref)

    def find(
        self, state: State | None = None, tags: dict[str, str] | None = None
    ) -> list[InstanceRecord]:
        wanted = (tags or {}).items()
        return [
            r
            for r in self.core.repo.all()
            if (state is None or r.state == state) and wanted <= r.tags.items()
        ]

    def agent(self, ref: str) -> tuple[InstanceRecord, AgentClient]:
        """The live guest agent connection of a running instance, for exec, stat and copy."""
        record = self.get(ref)
        if record.skip_guest_agent:
            raise InvalidState(
                f"instance {record.name!r} was created with skip_guest_agent: "
                "exec, stat and copy need the guest agent",
                code="agent_unavailable",
            )
        if record.state not in (State.RUNNING, State.INITIALIZING):
            raise self.not_running(record)
        agent = self.core.agents.get(record.id)
        if agent is None or not agent.connected:
            raise Unavailable(f"the guest agent of instance {record.name!r} is not connected yet")
        return record, agent

    async def wait_for_agent(self, ref: str, timeout: float) -> tuple[InstanceRecord, AgentClient]:
        """`agent`, waiting up to `timeout` s for an agent not connected yet."""
        try:
            return self.agent(ref)
        except Unavailable:
            if timeout <= 0:
                raise
        record = self.get(ref)
        return record, await await_agent(self.core, record.id, timeout)

    def not_running(self, record: InstanceRecord) -> InvalidState:
        """Why exec and copy cannot reach an instance, saying so plainly when its program
        has exited (the VM then powers off: a command that ends at once ends the VM)."""
        if record.state not in (State.STOPPED, State.SHUTDOWN) or record.exit_code is None:
            return invalid(record, "reach the guest of", "it is not running")
        how = record.exit_message or f"exited with code {record.exit_code}"
        return InvalidState(
            f"instance {record.name!r} has exited ({how}; now {record.state}): exec and copy "
            "need a running instance; start it again, with a command that keeps running"
        )

    async def exited(self, ref: str, wait: float = 10.0) -> InvalidState | None:
        """After the agent went away mid-exec: the instance's exit, once it has stopped (a
        moment after the connection closes), or None if it has not stopped by then."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            record = self.get(ref)
            if record.state in (State.STOPPED, State.SHUTDOWN):
                return self.not_running(record)
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(0.1)

    def lease(self, record: InstanceRecord) -> Lease | None:
        """The instance's network lease (None: no network)."""
        return self.network.lease(record.id) if self.network is not None else None

    async def network_counters(self, record: InstanceRecord) -> tuple[int, int]:
        """(rx, tx) bytes as the guest sees them; zeros without a network device."""
        if self.lease(record) is None or self.network is None:
            return 0, 0
        counters = await asyncio.to_thread(self.network.counters, record.id)
        return counters or (0, 0)

    def usage(self) -> capacity.Usage:
        """The host's capacity and what each instance holds (`GET /resources`)."""

        def rates(record: InstanceRecord) -> tuple[int | None, int | None]:
            lease = self.lease(record)
            return (lease.download_rate, lease.upload_rate) if lease else (None, None)

        return capacity.usage(self.find(), self.core.limits, self.core.settings, rates)

    def health_status(self, record: InstanceRecord) -> HealthStatus:
        return self.health.status(record)

    def attachments(self, record: InstanceRecord) -> list[Attachment]:
        return self.volumes.attachments_of(record.id)

    def stats(self, ref: str) -> tuple[InstanceRecord, ProcessStats]:
        """What the VMM process spends now (zeros while no VMM runs)."""
        record = self.get(ref)
        usage = process_stats(record.pid) if record.pid is not None else None
        return record, usage or ProcessStats(cpu_seconds=0.0, rss_bytes=0, vms_bytes=0)

    async def wait(self, ref: str, state: State, timeout: float) -> tuple[InstanceRecord, bool]:
        """Block until the instance is in `state`, or in a settled state it will not leave on
        its own (a crashed workload: Stopped); the bool says whether the wait timed out."""
        core, record_id = self.core, self.get(ref).id

        def reached() -> bool:
            current = core.current(record_id).state
            return current == state or current in SETTLED

        try:
            await core.changes.wait_for(reached, timeout)
        except TimeoutError:
            return core.current(record_id), True
        return core.current(record_id), False

    async def changed(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Return once `predicate()` holds, checked at every change of any instance;
        TimeoutError after `timeout` s (a loop that follows states, as service groups)."""
        await self.core.changes.wait_for(predicate, timeout)

    def logs(self, ref: str, source: LogSource, *, tail: int, follow: bool) -> AsyncIterator[str]:
        """A follow ends when the instance is (or gets) Stopped or deleted."""
        record_id = self.get(ref).id

        def stopped() -> bool:
            record = self.core.repo.get(record_id)
            return record is None or record.state == State.STOPPED

        path = self.core.paths(record_id).log(source)
        return read_log(path, tail=tail, follow=follow, ended=stopped)

    def log_path(self, ref: str, source: LogSource) -> Path:
        """The current log file of `source` (for byte-range reads, as `/v1`'s log)."""
        return self.core.paths(self.get(ref).id).log(source)

    # ---- commands --------------------------------------------------------------------

    async def create(
        self, request: CreateInstanceRequest, *, shareable_memory: bool = False
    ) -> InstanceRecord:
        """`shareable_memory`: boot so that forks of its snapshots can map its RAM
        copy-on-write (a template's builder; ember/templates)."""
        return await create.create(self.core, request, shareable_memory=shareable_memory)

    async def start(
        self, ref: str, cmd: list[str] | None = None, entrypoint: list[str] | None = None
    ) -> InstanceRecord:
        return await start.start(self.core, self.get(ref).id, cmd=cmd, entrypoint=entrypoint)

    async def stop(self, ref: str, *, origin: StopOrigin = "user") -> InstanceRecord:
        """`origin` (the user or the platform) goes into the stop reason."""
        return await stop.stop(self.core, self.get(ref).id, origin=origin)

    async def update(self, ref: str, request: UpdateInstanceRequest) -> InstanceRecord:
        record = self.get(ref)
        networked = self.lease(record) is not None
        return update.update(self.core, record.id, request, networked=networked)

    async def delete(self, ref: str, *, graceful: bool = False) -> None:
        record_id = self.get(ref).id
        await cancel_instance_jobs(self.jobs, record_id)  # before its files go
        await delete.delete(self.core, record_id, graceful=graceful)
        self.snapshots.store.delete_schedule(record_id)  # its snapshots stay

    async def standby(
        self,
        ref: str,
        *,
        compression: CompressionConfig | None = None,
        compression_delay: str | None = None,
        origin: StopOrigin = "user",
    ) -> InstanceRecord:
        return await standing.standby(
            self.core,
            self.jobs,
            self.get(ref).id,
            compression=compression,
            compression_delay=compression_delay,
            origin=origin,
        )

    async def restore(self, ref: str) -> InstanceRecord:
        return await restore(self.core, self.jobs, self.network, self.get(ref).id)

    # ---- snapshots, forks, schedules (snapshot.py, fork.py, ember/snapshots) -----------

    def find_snapshots(
        self,
        *,
        kind: SnapshotKind | None = None,
        name: str | None = None,
        instance_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> list[SnapshotRecord]:
        """Oldest first; every given filter must hold."""
        return self.snapshots.store.find(kind=kind, name=name, instance_id=instance_id, tags=tags)

    async def create_snapshot(
        self,
        ref: str,
        kind: SnapshotKind,
        *,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        compression: CompressionConfig | None = None,
    ) -> SnapshotRecord:
        return await self.snapshots.create(
            self.get(ref).id, kind, name=name, tags=tags, compression=compression
        )

    async def restore_snapshot(
        self, ref: str, snapshot_ref: str, target: State | None, hypervisor: str | None
    ) -> InstanceRecord:
        return await self.snapshots.restore_into(
            self.get(ref).id, snapshot_ref, target_state=target, target_hypervisor=hypervisor
        )

    async def fork(
        self, ref: str, name: str, *, from_running: bool, target: State | None
    ) -> InstanceRecord:
        return await forking.fork_instance(
            self.snapshots, self.get(ref).id, name, from_running=from_running, target_state=target
        )

    async def fork_snapshot(
        self, snapshot_ref: str, name: str, target: State | None, hypervisor: str | None
    ) -> InstanceRecord:
        return await forking.fork_snapshot(
            self.snapshots, snapshot_ref, name, target_state=target, target_hypervisor=hypervisor
        )

    def snapshot_schedule(self, ref: str) -> ScheduleRecord:
        record = self.get(ref)
        schedule = self.snapshots.store.schedule(record.id)
        if schedule is None:
            raise NotFound(f"instance {record.name!r} has no snapshot schedule")
        return schedule

    def set_snapshot_schedule(self, ref: str, request: ScheduleRequest) -> ScheduleRecord:
        record_id = self.get(ref).id
        current = self.snapshots.store.schedule(record_id)
        return self.snapshots.store.put_schedule(plan_schedule(record_id, request, current))

    def delete_snapshot_schedule(self, ref: str) -> None:
        record = self.get(ref)
        if not self.snapshots.store.delete_schedule(record.id):
            raise NotFound(f"instance {record.name!r} has no snapshot schedule")

    async def auto_standby_status(self, ref: str) -> Report:
        return await self.auto_standby.status(self.get(ref))

    async def auto_standby_hold(self, ref: str) -> Report:
        """409 when the instance is in (or entering) standby."""
        return await self.auto_standby.hold(self.get(ref))

    async def attach_volume(
        self, ref: str, volume: str, mount_path: str, *, readonly: bool = False
    ) -> InstanceRecord:
        return await mounts.attach_volume(
            self.core, self.volumes, self.get(ref).id, volume, mount_path, readonly=readonly
        )

    async def detach_volume(self, ref: str, volume: str) -> InstanceRecord:
        return await mounts.detach_volume(self.core, self.volumes, self.get(ref).id, volume)
