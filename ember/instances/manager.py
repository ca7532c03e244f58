"""The instance manager: orchestrates each instance's life across store, disks and VMM.

Every lifecycle command runs under a per-instance lock and moves the record
through single-hop state transitions (`state.py`). Each booted VM has one
monitor task that owns the agent connection: it turns the agent's READY into
Running and the VMM's exit into Stopped with the exit code the guest recorded.
VMMs run detached from the server, so a restarted server adopts them again
from the pid and sockets kept in the record and runtime dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from ember.config import Settings
from ember.errors import (
    Conflict,
    EmberError,
    InvalidArgument,
    InvalidState,
    NotFound,
    Unavailable,
)
from ember.guest.client import AgentClient, AgentDisconnected, AgentStatus
from ember.guest.config import (
    MIN_OVERLAY_BYTES,
    GuestConfig,
    create_overlay_disk,
    read_exit_record,
    write_config_disk,
)
from ember.hypervisor import DiskSpec, Hypervisor, VMHandle, VMSpec, get_hypervisor
from ember.ids import is_id, new_id
from ember.images.manager import ImageManager
from ember.images.models import ImageRecord
from ember.instances.logs import LogSource, log_path, read_log, record_event
from ember.instances.models import InstanceRecord
from ember.instances.state import ACTIVE, SETTLED, State, check_transition
from ember.instances.stats import ProcessStats, process_stats
from ember.store import Repository, Store
from ember.system import BootArtifacts, load
from ember.units import format_size, parse_rate, parse_size
from ember.validation import validate_name, validate_tags

log = logging.getLogger("ember.instances")

AGENT_CONNECT_TIMEOUT = 30.0
HYPERVISOR_ALIASES = {"qemu-microvm": "qemu"}


class CreateRequest(BaseModel):
    """What `POST /instances` asks for, before validation of its human-readable values."""

    name: str
    image: str
    size: str = "1GB"
    hotplug_size: str | None = None
    overlay_size: str = "10GB"
    disk_io_bps: str | None = None
    vcpus: int = 2
    env: dict[str, str] | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    tags: dict[str, str] | None = None
    hypervisor: str | None = None
    skip_guest_agent: bool = False
    platform: str | None = None


class Changes:
    """Wakes every waiter when some state changed; callable from synchronous code."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Return once `predicate()` holds; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._event.wait()


class Paths:
    """Where one instance's files live: disks and logs in the data dir, sockets at a short path."""

    def __init__(self, instances_dir: Path, runtime_dir: Path, instance_id: str) -> None:
        self.dir = instances_dir / instance_id
        self.run = runtime_dir / instance_id
        self.overlay = self.dir / "overlay.ext4"
        self.config = self.dir / "config.disk"
        self.app_log = log_path(self.dir, LogSource.APP)
        self.vmm_log = log_path(self.dir, LogSource.VMM)
        self.qmp = self.run / "qmp.sock"
        self.agent = self.run / "agent.sock"
        self.pid_file = self.run / "vmm.pid"

    def handle(self, pid: int) -> VMHandle:
        return VMHandle(pid=pid, qmp_socket=self.qmp, agent_socket=self.agent)


class InstanceManager:
    def __init__(self, store: Store, settings: Settings, images: ImageManager) -> None:
        self.repo = Repository(store, "instances", InstanceRecord, "instance")
        self.settings = settings
        self.images = images
        self.instances_dir = settings.data_dir / "instances"
        self.runtime_dir = settings.runtime_dir
        self._monitors: dict[str, asyncio.Task[None]] = {}
        self._agents: dict[str, AgentClient] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._changed = Changes()
        self._stopping: set[str] = set()
        images.digest_in_use = self._digest_users

    # ---- server lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        """Adopt the VMs that kept running while the server was down."""
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        try:
            system = self._system()
            log.info("guest kernel %s, initrd %s", system.kernel_version, system.initrd_hash)
        except Unavailable as exc:  # the API still serves; creates will say the same
            log.warning("instances cannot boot: %s", exc.message)
        for record in self.repo.all():
            try:
                await self._adopt(record)
            except Exception as exc:
                log.exception("cannot adopt instance", extra={"instance": record.id})
                message = f"cannot adopt the VM after a server restart: {exc}"
                self._update(record.id, functools.partial(_unknown, message=message))

    async def _adopt(self, record: InstanceRecord) -> None:
        paths = self._paths(record.id)
        if record.state == State.CREATED:  # the server died inside create: finish the undo
            await self._discard(record)
            return
        if record.state not in ACTIVE and record.state != State.UNKNOWN:
            return
        hypervisor = self._hypervisor(record.hypervisor)
        if record.pid is not None and hypervisor.is_alive(paths.handle(record.pid)):
            record_event(paths.dir, f"adopted running VMM (pid {record.pid}) after server restart")
            self._watch(record, paths.handle(record.pid))
        else:
            await self._finish_stop(record.id)

    async def close(self) -> None:
        """Server shutdown: let go of the VMs (they keep running) and their connections."""
        for task in self._monitors.values():
            task.cancel()
        for task in list(self._monitors.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- queries ---------------------------------------------------------------------

    def get(self, ref: str) -> InstanceRecord:
        """Find by id, then name, then unique id prefix."""
        record = self.repo.get(ref) if is_id(ref) else None
        record = record or self.repo.by_name(ref)
        if record is None and ref:
            matches = self.repo.by_id_prefix(ref)
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
            for r in self.repo.all()
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
            raise _invalid(record, "reach the guest of", "it is not running")
        agent = self._agents.get(record.id)
        if agent is None or not agent.connected:
            raise Unavailable(f"the guest agent of instance {record.name!r} is not connected yet")
        return record, agent

    def stats(self, ref: str) -> tuple[InstanceRecord, ProcessStats]:
        """What the VMM process spends now (zeros while no VMM runs)."""
        record = self.get(ref)
        usage = process_stats(record.pid) if record.pid is not None else None
        return record, usage or ProcessStats(cpu_seconds=0.0, rss_bytes=0, vms_bytes=0)

    def _digest_users(self, digest: str) -> list[str]:
        return [r.name for r in self.repo.all() if r.image_digest == digest]

    async def wait(self, ref: str, state: State, timeout: float) -> tuple[InstanceRecord, bool]:
        """Block until the instance is in `state`, or in a settled state it will not leave on
        its own (a crashed workload: Stopped); the bool says whether the wait timed out."""
        record_id = self.get(ref).id

        def reached() -> bool:
            current = self._current(record_id).state
            return current == state or current in SETTLED

        try:
            await self._changed.wait_for(reached, timeout)
        except TimeoutError:
            return self._current(record_id), True
        return self._current(record_id), False

    def logs(self, ref: str, source: LogSource, *, tail: int, follow: bool) -> AsyncIterator[str]:
        record = self.get(ref)
        return read_log(log_path(self._paths(record.id).dir, source), tail=tail, follow=follow)

    # ---- commands --------------------------------------------------------------------

    async def create(self, request: CreateRequest) -> InstanceRecord:
        record = self._validate(request)
        image = self.images.get(request.image)
        self.images.rootfs_path(image)  # refuses images that are not ready
        if request.platform and request.platform != image.platform:
            raise InvalidArgument(
                f"platform: image {image.name!r} is {image.platform}, not {request.platform}; "
                "pull it for that platform first"
            )
        record.image, record.image_digest = image.name, image.digest
        record.platform = image.platform
        # The instance keeps what it was created from, even if the tag moves later.
        record.image_config = _image_config(image)
        _guest_config(record, record.image_config)  # refuses a request with nothing to run
        paths = self._paths(record.id)
        # Held from the insert on: a delete that finds the record waits for the boot.
        async with self._lock(record.id):
            self.repo.insert(record)
            try:
                paths.dir.mkdir(parents=True)
                record_event(paths.dir, f"creating from image {image.name} ({image.digest})")
                await asyncio.to_thread(create_overlay_disk, paths.overlay, record.overlay_bytes)
                await self._boot(record)
            except BaseException as exc:
                log.warning(
                    "create failed, cleaning up", extra={"instance": record.id, "error": exc}
                )
                await self._discard(self.repo.get(record.id) or record)
                self._locks.pop(record.id, None)
                raise
        return self._current(record.id)

    async def start(
        self, ref: str, cmd: list[str] | None = None, entrypoint: list[str] | None = None
    ) -> InstanceRecord:
        """Boot a Stopped instance; `cmd`/`entrypoint` replace the instance's from now on."""
        record = self.get(ref)
        async with self._lock(record.id):
            record = self._current(record.id)
            if record.state != State.STOPPED:
                raise _invalid(record, "start", "only a Stopped instance can start")
            updates = {k: v for k, v in (("cmd", cmd), ("entrypoint", entrypoint)) if v is not None}
            changed = record.model_copy(update=updates)
            _guest_config(changed, self._base_config(changed))  # refuses nothing to run
            if updates:

                def run_with(r: InstanceRecord) -> None:
                    r.cmd, r.entrypoint = changed.cmd, changed.entrypoint

                record = self._update(record.id, run_with)
            await self._boot(record)
        return self._current(record.id)

    async def stop(self, ref: str) -> InstanceRecord:
        """SIGTERM to the workload, then force the VM off after the stop timeout."""
        record = self.get(ref)
        async with self._lock(record.id):
            record = self._current(record.id)
            if record.state not in ACTIVE:
                raise _invalid(record, "stop", "it is not running")
            await self._shutdown(record, graceful=True)
        return self._current(record.id)

    async def delete(self, ref: str, *, graceful: bool = False) -> None:
        record = self.get(ref)
        async with self._lock(record.id):
            record = self._current(record.id)
            if record.pid is not None:
                await self._shutdown(record, graceful=graceful)
            await self._discard(self._current(record.id))
        self._locks.pop(record.id, None)

    # ---- internals -------------------------------------------------------------------

    def _validate(self, request: CreateRequest) -> InstanceRecord:
        name = validate_name(request.name)
        hypervisor_name = HYPERVISOR_ALIASES.get(request.hypervisor or "qemu", request.hypervisor)
        hypervisor = self._hypervisor(hypervisor_name or "qemu")
        hotplug = (
            parse_size(request.hotplug_size, field="hotplug_size") if request.hotplug_size else 0
        )
        if hotplug and not hypervisor.capabilities.hotplug_memory:
            raise InvalidArgument(
                f"hotplug_size: memory hotplug is not supported by the {hypervisor.name} "
                "microvm machine type; size the instance with `size` instead"
            )
        memory = parse_size(request.size, field="size")
        if memory < 64 * 1024**2:
            raise InvalidArgument("size: at least 64MB of memory is needed to boot")
        overlay = parse_size(request.overlay_size, field="overlay_size")
        if overlay < MIN_OVERLAY_BYTES:
            raise InvalidArgument(
                f"overlay_size: at least {format_size(MIN_OVERLAY_BYTES)} (the ext4 journal "
                "and metadata need room)"
            )
        io_limit = (
            parse_rate(request.disk_io_bps, field="disk_io_bps") if request.disk_io_bps else None
        )
        if request.vcpus < 1:
            raise InvalidArgument("vcpus: must be at least 1")
        if self.repo.by_name(name) is not None:
            raise Conflict(f"instance {name!r} already exists", code="already_exists")
        return InstanceRecord(
            id=new_id(),
            name=name,
            image=request.image,
            image_digest="",
            hypervisor=hypervisor.name,
            vcpus=request.vcpus,
            memory_bytes=memory,
            overlay_bytes=overlay,
            hotplug_bytes=hotplug,
            disk_io_bps=io_limit,
            entrypoint=request.entrypoint,
            cmd=request.cmd,
            env=request.env or {},
            tags=validate_tags(request.tags),
            skip_guest_agent=request.skip_guest_agent,
        )

    def _hypervisor(self, name: str) -> Hypervisor:
        return get_hypervisor(name, self.settings.accel)

    def _paths(self, instance_id: str) -> Paths:
        return Paths(self.instances_dir, self.runtime_dir, instance_id)

    def _system(self) -> BootArtifacts:
        return load(self.settings.system_path)

    def _lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    def _current(self, instance_id: str) -> InstanceRecord:
        record = self.repo.get(instance_id)
        if record is None:
            raise NotFound(f"instance {instance_id!r} not found")
        return record

    def _update(self, instance_id: str, change: Callable[[InstanceRecord], None]) -> InstanceRecord:
        record = self.repo.update(instance_id, change)
        self._changed.notify()
        return record

    def _transition(self, instance_id: str, target: State, **fields: object) -> InstanceRecord:
        def change(record: InstanceRecord) -> None:
            check_transition(record.state, target)
            record.state, record.state_error = target, None
            for key, value in fields.items():
                setattr(record, key, value)

        record = self._update(instance_id, change)
        record_event(self._paths(instance_id).dir, f"state -> {target}")
        return record

    def _base_config(self, record: InstanceRecord) -> GuestConfig:
        """The image's config the instance was made from (older records: the image's now)."""
        return record.image_config or _image_config(self.images.get(record.image))

    async def _boot(self, record: InstanceRecord) -> None:
        """Write the config disk and start the VMM: Created/Stopped -> Initializing."""
        paths = self._paths(record.id)
        system = self._system()
        rootfs = self.images.rootfs_of(record.image_digest)
        write_config_disk(paths.config, _guest_config(record, self._base_config(record)))
        paths.run.mkdir(parents=True, exist_ok=True)
        paths.app_log.parent.mkdir(parents=True, exist_ok=True)
        disks = [
            DiskSpec(rootfs, "ember-root", readonly=True, bps_limit=record.disk_io_bps),
            DiskSpec(paths.overlay, "ember-overlay", bps_limit=record.disk_io_bps),
            DiskSpec(paths.config, "ember-config"),
        ]
        spec = VMSpec(
            instance_dir=paths.dir,
            kernel=system.kernel,
            initrd=system.initrd,
            cmdline=system.cmdline,
            vcpus=record.vcpus,
            memory_bytes=record.memory_bytes,
            serial_log=paths.app_log,
            agent_socket=paths.agent,
            qmp_socket=paths.qmp,
            pid_file=paths.pid_file,
            disks=disks,
            name=record.name,
            vmm_log=paths.vmm_log,
        )
        hypervisor = self._hypervisor(record.hypervisor)
        record_event(paths.dir, f"starting {hypervisor.name} VMM ({system.kernel_version})")
        handle = await hypervisor.start(spec)
        record_event(paths.dir, f"VMM running (pid {handle.pid})")
        record = self._transition(
            record.id,
            State.INITIALIZING,
            pid=handle.pid,
            started_at=datetime.now(UTC),
            stopped_at=None,
            exit_code=None,
            exit_message=None,
        )
        self._watch(record, handle)

    def _watch(self, record: InstanceRecord, handle: VMHandle) -> None:
        task = asyncio.get_running_loop().create_task(self._monitor(record, handle))
        self._monitors[record.id] = task
        task.add_done_callback(lambda _: self._monitors.pop(record.id, None))

    async def _monitor(self, record: InstanceRecord, handle: VMHandle) -> None:
        """Follow one boot of a VM until its VMM exits."""
        hypervisor = self._hypervisor(record.hypervisor)
        agent_task = None
        if record.skip_guest_agent:
            if record.state == State.INITIALIZING:
                self._transition(record.id, State.RUNNING)
        else:
            agent_task = asyncio.create_task(self._follow_agent(record.id, handle))
        try:
            await hypervisor.wait_exit(handle)
        finally:
            if agent_task is not None:
                agent_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, EmberError):
                    await agent_task
            agent = self._agents.pop(record.id, None)
            if agent is not None:
                await agent.close()
        await self._finish_stop(record.id)

    async def _follow_agent(self, instance_id: str, handle: VMHandle) -> None:
        try:
            agent = await AgentClient.connect(handle.agent_socket, timeout=AGENT_CONNECT_TIMEOUT)
        except EmberError as exc:
            message = exc.message
            self._update(instance_id, lambda r: setattr(r, "state_error", message))
            return
        self._agents[instance_id] = agent
        try:
            status = await agent.wait_ready()
            if self._current(instance_id).state == State.INITIALIZING:
                self._transition(instance_id, State.RUNNING)
            record_event(self._paths(instance_id).dir, f"guest agent: workload {status.state}")
            status = await agent.wait_exit()
        except AgentDisconnected:
            return  # the VM is going away; the exit record on the config disk tells the rest
        self._update(instance_id, lambda r: _exited(r, status))

    async def _finish_stop(self, instance_id: str) -> None:
        """The VMM is gone: record how the workload ended and settle in Stopped."""
        paths = self._paths(instance_id)
        exit_record = read_exit_record(paths.config) if paths.config.exists() else None
        requested = instance_id in self._stopping

        def settle(record: InstanceRecord) -> None:
            if exit_record is not None:
                record.exit_code, record.exit_message = exit_record.exit_code, exit_record.message
            elif record.exit_code is None and not requested:
                record.exit_message = "the VMM exited before the workload reported an exit"
            if record.state != State.STOPPED:
                record.state = State.STOPPED
            record.pid, record.stopped_at, record.state_error = None, datetime.now(UTC), None

        record = self._update(instance_id, settle)
        self._hypervisor(record.hypervisor).collect_output(paths.dir, paths.vmm_log)
        shutil.rmtree(paths.run, ignore_errors=True)
        record_event(paths.dir, f"state -> Stopped ({record.exit_message or 'no exit status'})")

    async def _shutdown(self, record: InstanceRecord, *, graceful: bool) -> None:
        """Bring the VMM down and wait until the monitor has recorded Stopped."""
        paths = self._paths(record.id)
        hypervisor = self._hypervisor(record.hypervisor)
        handle = paths.handle(record.pid or 0)
        self._stopping.add(record.id)
        try:
            agent = self._agents.get(record.id)
            if graceful and agent is not None and record.state != State.PAUSED:
                record_event(paths.dir, "stop: SIGTERM to the workload")
                with contextlib.suppress(EmberError, OSError):
                    await agent.signal(signal.SIGTERM)
                if await hypervisor.wait_exit(handle, timeout=self.settings.stop_timeout_seconds):
                    await self._await_monitor(record.id)
                    return
                record_event(paths.dir, "stop: timed out, forcing the VM off")
            await hypervisor.quit(handle)
            await self._await_monitor(record.id)
        finally:
            self._stopping.discard(record.id)

    async def _await_monitor(self, instance_id: str) -> None:
        task = self._monitors.get(instance_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif self._current(instance_id).state != State.STOPPED:
            await self._finish_stop(instance_id)

    async def _discard(self, record: InstanceRecord) -> None:
        """Remove every trace of an instance: VMM, sockets, disks, logs and record."""
        paths = self._paths(record.id)
        # No pid in the record: the VMM may still have started (a create cut short).
        pid = record.pid or _read_pid(paths.pid_file)
        if pid is not None:
            hypervisor = self._hypervisor(record.hypervisor)
            handle = paths.handle(pid)
            hypervisor.kill(handle)  # only if it is alive and ours (is_alive checks)
            await hypervisor.wait_exit(handle, timeout=10)
        task = self._monitors.pop(record.id, None)
        if task is not None:
            task.cancel()
        shutil.rmtree(paths.run, ignore_errors=True)
        shutil.rmtree(paths.dir, ignore_errors=True)
        self.repo.delete(record.id)
        self.images.release_rootfs(record.image_digest)
        self._changed.notify()


def _image_config(image: ImageRecord) -> GuestConfig:
    return GuestConfig(
        entrypoint=image.entrypoint or [],
        cmd=image.cmd or [],
        env=image.env or {},
        working_dir=image.working_dir or "/",
        user=image.user or "",
    )


def _guest_config(record: InstanceRecord, image: GuestConfig) -> GuestConfig:
    """Merge the request over the image config the way `docker run` does."""
    entrypoint = record.entrypoint if record.entrypoint is not None else image.entrypoint
    if record.cmd is not None:
        cmd = record.cmd
    elif record.entrypoint is not None:
        cmd = []  # a new entrypoint drops the image's CMD, as in Docker
    else:
        cmd = image.cmd
    if not entrypoint and not cmd:
        raise InvalidArgument(
            f"image {record.image!r} has no entrypoint or cmd: give `cmd` or `entrypoint`"
        )
    return image.model_copy(
        update={"entrypoint": entrypoint, "cmd": cmd, "env": {**image.env, **record.env},
                "hostname": record.name}
    )  # fmt: skip


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _exited(record: InstanceRecord, status: AgentStatus) -> None:
    record.exit_code, record.exit_message = status.exit_code, status.message


def _unknown(record: InstanceRecord, message: str) -> None:
    record.state, record.state_error = State.UNKNOWN, message


def _invalid(record: InstanceRecord, action: str, why: str) -> InvalidState:
    return InvalidState(f"cannot {action} instance {record.name!r} ({record.state}): {why}")
