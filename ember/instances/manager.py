"""The instance manager: the public face of the instance core.

It resolves references, takes the per-instance lock and calls the operation
modules (`create`, `start`, `stop`, `delete`, `monitor`); readers never wait
for a lock. See README.md for the layout and where a new operation goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from ember.config import Settings
from ember.errors import InvalidArgument, InvalidState, NotFound, Unavailable
from ember.guest.client import AgentClient
from ember.hypervisor import Hypervisors
from ember.hypervisor.jail import confinement
from ember.hypervisor.qemu import QEMU_BINARY
from ember.ids import is_id
from ember.instances import (
    create,
    delete,
    guestnet,
    monitor,
    mounts,
    standby,
    start,
    stop,
    update,
)
from ember.instances import fork as forking
from ember.instances.attachments import VolumeAttachments
from ember.instances.autostandby import AutoStandby, Report
from ember.instances.core import InstanceCore, invalid
from ember.instances.disks import InstanceFiles, RootDisk, RootDiskSource
from ember.instances.expiry import Reaper
from ember.instances.health import HealthMonitor, HealthStatus
from ember.instances.jail import vmm_jail
from ember.instances.layout import Layout
from ember.instances.logs import LogRotator, LogSource, read_log
from ember.instances.models import InstanceRecord
from ember.instances.networking import NetworkLease
from ember.instances.plan import HostLimits
from ember.instances.request import CreateInstanceRequest, UpdateInstanceRequest
from ember.instances.resources import InstanceResource, Resources
from ember.instances.snapshot import Snapshots
from ember.instances.state import SETTLED, State
from ember.instances.stats import ProcessStats, process_stats
from ember.instances.supervisor import Supervisor
from ember.network import Lease, NetworkManager
from ember.snapshots.compression import BackgroundJobs, CompressionConfig
from ember.snapshots.layout import SnapshotLayout
from ember.snapshots.models import ScheduleRecord, SnapshotKind, SnapshotRecord
from ember.snapshots.schedule import Scheduler, ScheduleRequest, plan_schedule
from ember.snapshots.store import SnapshotStore
from ember.store import Repository, Store
from ember.system import BootArtifacts
from ember.volumes import Attachment, VolumeManager

log = logging.getLogger("ember.instances")


class InstanceManager:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        images: RootDiskSource,
        hypervisors: Hypervisors,
        system: Callable[[], BootArtifacts],
        network: NetworkManager | None,
        volumes: VolumeManager,
        resources: list[InstanceResource] | None = None,
    ) -> None:
        """`network` is None when networking is off on this server. What an instance
        holds is acquired in this order and released in reverse: its files, its root
        disk, its network lease, its volume attachments, then `resources`."""
        layout = Layout(settings.data_dir / "instances", settings.runtime_dir)
        held: list[InstanceResource] = [InstanceFiles(layout), RootDisk(images)]
        if network is not None:
            held.append(NetworkLease(network))
        held.append(VolumeAttachments(volumes))
        self.network, self.volumes = network, volumes
        repo = Repository(store, "instances", InstanceRecord, "instance")
        jail = vmm_jail(settings, repo) if settings.jail == "on" else None
        held += [jail] if jail is not None else []
        # What confines each VMM on this host (GET /capabilities).
        self.confinement = confinement(
            jail is not None, jail.cgroups if jail else None, binary=QEMU_BINARY,
            why_off="turned off by EMBER_JAIL=off: every VMM runs as root",
        )  # fmt: skip
        self.core = InstanceCore(
            repo=repo,
            settings=settings,
            layout=layout,
            hypervisors=hypervisors,
            images=images,
            resources=Resources([*held, *(resources or [])]),
            limits=HostLimits.detect(settings.max_vcpus),
            system=system,
            networking=network is not None,
        )
        # Background compression of standby snapshots, one job per instance.
        self.snapshot_jobs = BackgroundJobs()
        # Named snapshots, forks and snapshot schedules (snapshot.py, fork.py).
        self.snapshots = Snapshots(
            self.core, SnapshotStore(store), SnapshotLayout(settings.data_dir / "snapshots"),
            self.snapshot_jobs, volumes, network,
        )  # fmt: skip
        self.scheduler = Scheduler(
            self.snapshots.store, self._scheduled_snapshot, self.snapshots.delete,
            lambda i: self.core.repo.get(i) is not None, settings.snapshot_schedule_tick_seconds,
        )  # fmt: skip
        # Supervision: restart policies, health checks, expiry, log size caps.
        self.supervisor = Supervisor(self.core)
        self.health = HealthMonitor(self.core, self._address)
        self.reaper = Reaper(self.core, self.delete)
        self.log_rotator = LogRotator(self._log_paths, settings.instance_log_max_bytes)
        self.auto_standby = AutoStandby(self.core, self._address, self.standby)

    # ---- server lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        """Undo creates cut short, adopt the VMs that kept running while the server was
        down, and release what instances that no longer exist still hold."""
        core = self.core
        core.layout.ensure_roots()
        for record in core.repo.all():
            try:
                if record.state == State.CREATED:  # the server died inside a create
                    await delete.discard(core, record)
                else:
                    await monitor.adopt(core, record)
                    standby.recover(core, core.current(record.id))
            except Exception as exc:
                log.exception("cannot adopt instance", extra={"instance": record.id})
                message = f"cannot adopt the VM after a server restart: {exc}"
                monitor.mark_unknown(core, record.id, message)
        core.resources.sweep({r.id for r in core.repo.all()})
        self.snapshots.recover()
        await self.reaper.reap()  # those that expired while the server was down
        self.supervisor.start()
        self.health.start()
        self.reaper.start()
        self.log_rotator.start()
        self.auto_standby.start()
        self.scheduler.start()

    async def close(self) -> None:
        """Server shutdown: let go of the VMs (they keep running) and their connections."""
        await self.auto_standby.close()  # first: it may be starting a standby
        for background in (self.reaper, self.supervisor, self.health, self.log_rotator):
            await background.close()
        await self.scheduler.close()
        await self.snapshots.close()
        await self.snapshot_jobs.close()  # a standby keeps its raw memory then
        for task in self.core.monitors.values():
            task.cancel()
        for task in list(self.core.monitors.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- queries ---------------------------------------------------------------------

    def get(self, ref: str) -> InstanceRecord:
        """Find by id, then name, then unique id prefix (names never look like ids)."""
        repo = self.core.repo
        record = repo.get(ref) if is_id(ref) else None
        record = record or repo.by_name(ref)
        if record is None and ref:
            matches = repo.by_id_prefix(ref)
            if len(matches) > 1:
                raise InvalidArgument(
                    f"instance id prefix {ref!r} is ambiguous ({len(matches)} matches)",
                    code="ambiguous",
                )
            record = matches[0] if matches else None
        if record is None:
            raise NotFound(f"instance {ref!r} not found")
        return record

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
            raise invalid(record, "reach the guest of", "it is not running")
        agent = self.core.agents.get(record.id)
        if agent is None or not agent.connected:
            raise Unavailable(f"the guest agent of instance {record.name!r} is not connected yet")
        return record, agent

    def lease(self, record: InstanceRecord) -> Lease | None:
        """The instance's network lease (None: no network)."""
        return self.network.lease(record.id) if self.network is not None else None

    async def network_counters(self, record: InstanceRecord) -> tuple[int, int]:
        """(rx, tx) bytes as the guest sees them; zeros without a network device."""
        if self.lease(record) is None or self.network is None:
            return 0, 0
        counters = await asyncio.to_thread(self.network.counters, record.id)
        return counters or (0, 0)

    def health_status(self, record: InstanceRecord) -> HealthStatus:
        return self.health.status(record)

    def _address(self, record: InstanceRecord) -> str | None:
        lease = self.lease(record)
        return lease.ip if lease is not None else None

    def _log_paths(self) -> list[Path]:
        return [
            self.core.paths(record.id).log(source)
            for record in self.core.repo.all()
            for source in LogSource
        ]

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

    def logs(self, ref: str, source: LogSource, *, tail: int, follow: bool) -> AsyncIterator[str]:
        path = self.core.paths(self.get(ref).id).log(source)
        return read_log(path, tail=tail, follow=follow)

    # ---- commands --------------------------------------------------------------------

    async def create(self, request: CreateInstanceRequest) -> InstanceRecord:
        return await create.create(self.core, request)

    async def start(
        self, ref: str, cmd: list[str] | None = None, entrypoint: list[str] | None = None
    ) -> InstanceRecord:
        record_id = self.get(ref).id
        record = await start.start(self.core, record_id, cmd=cmd, entrypoint=entrypoint)
        self.supervisor.manual_start(record_id)  # the owner's start: supervision starts over
        return self.core.current(record.id)

    async def stop(self, ref: str) -> InstanceRecord:
        """A stop is never undone by the supervisor; on a Stopped instance waiting for a
        restart it cancels that restart."""
        record = self.get(ref)
        if record.state == State.STOPPED and self.supervisor.pending(record):
            return self.supervisor.manual_stop(record.id)
        return await stop.stop(self.core, record.id)

    async def update(self, ref: str, request: UpdateInstanceRequest) -> InstanceRecord:
        record = self.get(ref)
        networked = self.lease(record) is not None
        record, changed = update.update(self.core, record.id, request, networked=networked)
        if "restart_policy" in changed:
            self.supervisor.policy_changed(record.id)
        return self.core.current(record.id)

    async def delete(self, ref: str, *, graceful: bool = False) -> None:
        record_id = self.get(ref).id
        await self.snapshot_jobs.cancel(record_id)  # before its files go
        await delete.delete(self.core, record_id, graceful=graceful)
        self.snapshots.store.delete_schedule(record_id)  # its snapshots stay

    async def standby(
        self,
        ref: str,
        *,
        compression: CompressionConfig | None = None,
        compression_delay: str | None = None,
    ) -> InstanceRecord:
        return await standby.standby(
            self.core,
            self.snapshot_jobs,
            self.get(ref).id,
            compression=compression,
            compression_delay=compression_delay,
        )

    async def restore(self, ref: str) -> InstanceRecord:
        record_id = self.get(ref).id
        async with self.core.lock(record_id):  # a fork's guest gets its own network back
            return await guestnet.restore_own_network(
                self.core, self.snapshot_jobs, self.network, record_id
            )

    # ---- snapshots, forks, schedules (snapshot.py, fork.py, ember/snapshots) -----------

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
        self, ref: str, snapshot_id: str, target: State | None, hypervisor: str | None
    ) -> InstanceRecord:
        return await self.snapshots.restore(
            self.get(ref).id, snapshot_id, target_state=target, target_hypervisor=hypervisor
        )

    async def fork(
        self, ref: str, name: str, *, from_running: bool, target: State | None
    ) -> InstanceRecord:
        return await forking.fork_instance(
            self.snapshots, self.get(ref).id, name, from_running=from_running, target_state=target
        )

    async def fork_snapshot(
        self, snapshot_id: str, name: str, target: State | None, hypervisor: str | None
    ) -> InstanceRecord:
        return await forking.fork_snapshot(
            self.snapshots, snapshot_id, name, target_state=target, target_hypervisor=hypervisor
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

    async def _scheduled_snapshot(self, schedule: ScheduleRecord, name: str) -> SnapshotRecord:
        """As Hypeman: Standby from a Running or Standby instance, Stopped from a Stopped one."""
        record = self.core.current(schedule.instance_id)
        kind: SnapshotKind = "Stopped" if record.state == State.STOPPED else "Standby"
        return await self.snapshots.create(
            record.id, kind, name=name, tags=schedule.metadata, scheduled=True
        )

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
