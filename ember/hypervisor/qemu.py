"""QEMU backend: one ``-M microvm`` process per VM, controlled over QMP.

QEMU runs with ``-daemonize`` (it forks, calls setsid and writes a pidfile), so
it outlives the Ember server; a restarted server re-adopts it from the stored
pid and sockets. ``-no-reboot`` turns the guest's power-off (and any reboot or
panic, see ``panic=-1 reboot=t`` on the kernel cmdline) into QEMU exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import struct
import time
from pathlib import Path

from ember.errors import Unavailable
from ember.hypervisor.accel import Accel, guest_kernel_args
from ember.hypervisor.base import (
    Capabilities,
    DiskSpec,
    HypervisorName,
    RunState,
    SavedState,
    VMHandle,
    VMSpec,
)
from ember.hypervisor.jail import cgroup_launcher, jail_args
from ember.hypervisor.qmp import QMPClient, QMPError
from ember.logsetup import append_stamped

QEMU_BINARY = "qemu-system-x86_64"
AGENT_PORT_NAME = "ember.agent"  # must match PORT_NAME in agent.c
APP_PORT_NAME = "ember.app"  # the workload's console (hvc0 in the guest; see init)
VHOST_NET = Path("/dev/vhost-net")
_MIB = 1024 * 1024
_RAM_ID = "ram0"
_UNCAPPED = 100 << 30  # bytes per second
# QEMU's `query-status` run states, as the hypervisor interface names them.
_RUN_STATES = {
    "running": RunState.RUNNING,
    "inmigrate": RunState.INCOMING,
    "prelaunch": RunState.INCOMING,
    **dict.fromkeys(
        ("paused", "postmigrate", "finish-migrate", "save-vm", "restore-vm", "suspended"),
        RunState.PAUSED,
    ),
}
# Migration states in which a save is still streaming (`migrate_cancel` ends it).
_MIGRATING = {"setup", "active", "pre-switchover", "device", "wait-unplug", "cancelling"}


def build_command(
    spec: VMSpec, accel: Accel, binary: str = QEMU_BINARY, *, incoming: bool = False
) -> list[str]:
    """The command line of one VM; `incoming`: wait paused for a restore (`migrate-incoming`)."""
    # pit/pic on: under TCG the guest kernel calibrates its clock against the PIT; without
    # it, it stops at "tsc: Marking TSC unstable" and never reaches init.
    if accel == "kvm":
        accel_args = ["-accel", "kvm", "-cpu", "host"]
    else:
        accel_args = ["-accel", "tcg,thread=multi", "-cpu", "max"]
    cmd = [
        binary,
        "-name",
        f"guest={spec.name}",
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on"
        + (f",memory-backend={_RAM_ID}" if spec.memory_file else ""),
        *accel_args,
        "-m",
        f"{max(spec.memory_bytes // _MIB, 64)}M",
        "-smp",
        str(spec.vcpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(spec.kernel),
        "-initrd",
        str(spec.initrd),
        "-append",
        " ".join([spec.cmdline, *guest_kernel_args(accel)]),
        "-chardev",
        _file_or_null("console", spec.console_log),
        "-serial",
        "chardev:console",
    ]
    for i, disk in enumerate(spec.disks):
        if disk.swappable:
            cmd += _slot_args(disk)
            continue
        drive = f"id=disk{i},file={_opt(disk.path)},format=raw,if=none"
        # auto-read-only=off: the end of a migration (save) would otherwise reopen a
        # writable disk read-only by its path, which a jailed QEMU cannot open.
        drive += ",readonly=on" if disk.readonly else ",readonly=off,auto-read-only=off"
        if disk.bps_limit:
            drive += f",throttling.bps-total={disk.bps_limit}"
        cmd += ["-drive", drive, "-device", f"virtio-blk-device,drive=disk{i},serial={disk.serial}"]
    cmd += _nic_args(spec)
    cmd += [
        "-device", "virtio-serial-device",
        # The workload's stdout/stderr: a virtio console (the guest's hvc0, a tty as the
        # serial port was), so the kernel's own lines stay on ttyS0, out of the app log.
        "-chardev", _file_or_null("app", spec.app_log),
        "-device", f"virtconsole,chardev=app,name={APP_PORT_NAME}",
        "-chardev", f"socket,id=agent,path={_opt(spec.agent_socket)},server=on,wait=off",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}",
        # The guest reports the pages it freed; QEMU punches them out of the memory file,
        # so a standby keeps only what the guest uses (qemu-notes: 519 -> 121 MB).
        "-device", f"virtio-balloon-device,free-page-reporting={_on(spec.free_page_reporting)}",
        "-qmp", f"unix:{_opt(spec.qmp_socket)},server=on,wait=off",
        "-daemonize", "-pidfile", str(spec.pid_file),
        # Daemonized QEMU points its stderr at /dev/null, or at the -D file if there is one.
        "-D", str(_runtime_output(spec)),
    ]  # fmt: skip
    cmd += _memory_args(spec)
    if incoming:
        cmd += ["-incoming", "defer"]
    return cmd + jail_args(spec.jail)


def device_set(spec: VMSpec, accel: Accel) -> list[str]:
    """The `-device` drivers of `spec`'s command line in order, and the memory backend:
    what QEMU's migration stream must find again on restore."""
    command = build_command(spec, accel)
    devices = [command[i + 1].split(",")[0] for i, arg in enumerate(command) if arg == "-device"]
    memory = ["memory-backend-file"] if spec.memory_file is not None else []
    # Appended only when off: the sets recorded before this was a choice stay equal.
    reporting = [] if spec.free_page_reporting else ["free-page-reporting=off"]
    return devices + memory + reporting


def _slot_args(disk: DiskSpec) -> list[str]:
    """A swappable disk as named nodes: the device's `raw` node `<serial>` over a child
    `<serial>-file` that `change_disk` replaces (a `-drive` hides the node names)."""
    ro = "on" if disk.readonly else "off"
    child = f"node-name={disk.serial}-file,read-only={ro}"
    if disk.format == "qcow2":
        child = f"driver=qcow2,{child},file.driver=file,file.filename={_opt(disk.path)}"
    else:
        child = f"driver=file,{child},filename={_opt(disk.path)}"
    return [
        "-blockdev", child,
        "-blockdev", f"driver=raw,node-name={disk.serial},file={disk.serial}-file,read-only={ro}",
        "-device", f"virtio-blk-device,drive={disk.serial},serial={disk.serial}",
    ]  # fmt: skip


class _HandedFiles:
    """Files Ember opens and hands to the running QEMU as fdsets (`add-fd`), named
    `/dev/fdset/N` in its block nodes: a jailed QEMU (`-chroot` into an empty directory)
    cannot open a path itself, and with the jail off this is the same one path."""

    def __init__(self, qmp: QMPClient) -> None:
        self.qmp, self.fdsets = qmp, list[int]()

    async def path(self, path: Path, *, readonly: bool) -> str:
        fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        try:
            added = await self.qmp.execute_with_fd("add-fd", {}, fd)
        finally:
            os.close(fd)
        self.fdsets.append(int(added["fdset-id"]))
        return f"/dev/fdset/{self.fdsets[-1]}"

    async def release(self) -> None:
        """Drop the sets: each is freed once the node holding its file closes it."""
        for fdset in self.fdsets:
            with contextlib.suppress(QMPError, Unavailable):
                await self.qmp.execute("remove-fd", {"fdset-id": fdset})


def _qcow2_backing(path: Path) -> Path:
    """The backing file a qcow2 header names (offset and length at bytes 8-19)."""
    with open(path, "rb") as layer:
        offset, size = struct.unpack(">QI", layer.read(20)[8:20])
        layer.seek(offset)
        name = layer.read(size).decode()
    return Path(name) if os.path.isabs(name) else path.parent / name


async def _child_node(node: str, disk: DiskSpec, files: _HandedFiles) -> dict[str, object]:
    file = {"driver": "file", "filename": await files.path(disk.path, readonly=False)}
    if disk.format != "qcow2":
        return {**file, "node-name": node}
    # The backing (the volume) named explicitly: QEMU would open the header's path itself.
    volume = await files.path(_qcow2_backing(disk.path), readonly=True)
    backing = {"driver": "raw", "file": {"driver": "file", "filename": volume}}
    return {"driver": "qcow2", "node-name": node, "file": file, "backing": backing}


async def _slot_children(qmp: QMPClient, serial: str) -> list[str]:
    """The named child nodes a slot has had (`<serial>-file` from boot, `<serial>.N` since)."""
    nodes = await qmp.execute("query-named-block-nodes", {"flat": True})
    names = [n["node-name"] for n in nodes]
    return [n for n in names if n == f"{serial}-file" or n.startswith(f"{serial}.")]


async def _reopen_slot(qmp: QMPClient, slot: str, child: str) -> None:
    options = {"driver": "raw", "node-name": slot, "file": child, "read-only": False}
    await qmp.execute("blockdev-reopen", {"options": [options]})


async def _node_size(qmp: QMPClient, node: str) -> int:
    nodes = await qmp.execute("query-named-block-nodes", {"flat": True})
    return int(next(n["image"]["virtual-size"] for n in nodes if n["node-name"] == node))


def _memory_args(spec: VMSpec) -> list[str]:
    """Guest RAM as a shared file mapping: with `x-ignore-shared` a save leaves it in the
    file and writes only device state (~60 KB), and a restore maps it back. Or, private
    (`share=off`), a template's RAM file that many clones map copy-on-write: a save then
    streams the RAM (a private block is never "shared", so never skipped)."""
    if spec.memory_file is None:
        return []
    size = f"{max(spec.memory_bytes // _MIB, 64)}M"
    backend = f"memory-backend-file,id={_RAM_ID},size={size},mem-path={_opt(spec.memory_file)}"
    return ["-object", f"{backend},share={_on(not spec.memory_private)}"]


def _on(flag: bool) -> str:
    return "on" if flag else "off"


async def _migration_setup(qmp: QMPClient, *, ignore_shared: bool) -> None:
    """Both ends of a migration must agree on `x-ignore-shared` (RAM left in its file)."""
    capability = {"capability": "x-ignore-shared", "state": ignore_shared}
    await qmp.execute("migrate-set-capabilities", {"capabilities": [capability]})
    # The default bandwidth cap (128 MB/s) would slow a streamed save of RAM to a file.
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": _UNCAPPED})


async def _stream_uri(qmp: QMPClient, path: Path, flags: int, what: str) -> str:
    """A migration URI for `path`, opened here and handed to QEMU as a descriptor: a
    jailed QEMU can neither open paths nor spawn `cat` (and the fd skips a pipe)."""
    name = f"ember-{what}"
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise Unavailable(f"QEMU {what} failed: cannot open {path}: {exc.strerror}") from exc
    try:
        await qmp.execute_with_fd("getfd", {"fdname": name}, fd)
    finally:
        os.close(fd)
    return f"fd:{name}"


async def _wait_migration(qmp: QMPClient, what: str, timeout: float = 600.0) -> None:
    """Poll `query-migrate` until it completes; Unavailable with QEMU's reason if not."""
    deadline = time.monotonic() + timeout
    while True:
        info = await qmp.execute("query-migrate")
        status = info.get("status", "none")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            why = info.get("error-desc", status)
            raise Unavailable(f"QEMU {what} failed: {why}")
        if time.monotonic() > deadline:
            raise Unavailable(f"QEMU {what} did not complete in {timeout:.0f} s ({status})")
        await asyncio.sleep(0.005)


def _append_lines(log: Path | None, lines: list[str]) -> None:
    if log is not None and lines:
        append_stamped(log, lines)


def _take(path: Path) -> str:
    """What QEMU wrote to its -D file, which is then removed ("" if there is none)."""
    try:
        said = path.read_text(errors="replace").strip()
    except FileNotFoundError:
        return ""
    path.unlink(missing_ok=True)
    return said


def _runtime_output(spec: VMSpec) -> Path:
    return spec.vmm_output or spec.instance_dir / "qemu.out"


def vhost_net_usable() -> bool:
    """vhost-net only where /dev/vhost-net can be opened: QEMU 7.2 *aborts* (an
    assertion in net_client_init1, not an error) on ``vhost=on`` without it."""
    return os.access(VHOST_NET, os.R_OK | os.W_OK)


def _nic_args(spec: VMSpec) -> list[str]:
    nics = spec.nics
    vhost = ",vhost=on" if nics and vhost_net_usable() else ""
    args: list[str] = []
    for i, nic in enumerate(nics):
        # script=no/downscript=no: the TAP is made and wired by ember/network, not QEMU.
        args += ["-netdev", f"tap,id=net{i},ifname={nic.tap},script=no,downscript=no{vhost}"]
        device = f"virtio-net-device,netdev=net{i}" + (f",mac={nic.mac}" if nic.mac else "")
        args += ["-device", device]
    return args


def _file_or_null(chardev_id: str, path: Path | None) -> str:
    """A chardev appending to `path`, or discarding when there is none."""
    if path is None:
        return f"null,id={chardev_id}"
    return f"file,id={chardev_id},path={_opt(path)},append=on"


def _opt(path: Path) -> str:
    """Escape a path for QEMU's comma-separated option syntax."""
    return str(path).replace(",", ",,")


class QemuHypervisor:
    name: HypervisorName = "qemu"
    # microvm has no hotplug bus: disks change through swappable slots (`change_disk`).
    capabilities = Capabilities(snapshot=True, disk_io_limit=True, hotplug_disk=True, balloon=True)

    def __init__(self, accel: Accel, binary: str = QEMU_BINARY) -> None:
        self.accel: Accel = accel
        self.binary = binary

    async def start(self, spec: VMSpec) -> VMHandle:
        return await self._launch(spec, incoming=False)

    async def _launch(self, spec: VMSpec, *, incoming: bool) -> VMHandle:
        spec.instance_dir.mkdir(parents=True, exist_ok=True)
        for stale in (spec.agent_socket, spec.qmp_socket, spec.pid_file):
            stale.unlink(missing_ok=True)
        # Whatever an earlier run left there belongs to that run, not to this start.
        runtime = _runtime_output(spec)
        _append_lines(spec.vmm_log, _take(runtime).splitlines())
        command = build_command(spec, self.accel, self.binary, incoming=incoming)
        _append_lines(spec.vmm_log, [shlex.join(command)])
        proc = await asyncio.create_subprocess_exec(
            *cgroup_launcher(spec.jail),
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=spec.instance_dir,
        )
        # With -daemonize the parent exits once the VM is set up (or failed).
        out, _ = await proc.communicate()
        said = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            # A daemonized QEMU reports most start-up errors (e.g. "cannot set up guest
            # memory") on its -D file, not on the pipe: take both, as the failed create
            # deletes the instance directory with the file in it.
            said = "\n".join(part for part in (said, _take(runtime)) if part)
        _append_lines(spec.vmm_log, said.splitlines())
        if proc.returncode != 0:
            reason = "; ".join(said.splitlines()) or "no output"
            raise Unavailable(f"QEMU failed to start (exit {proc.returncode}): {reason}")
        pid = int(spec.pid_file.read_text().strip())
        _append_lines(spec.vmm_log, [f"started pid {pid} ({self.accel})"])
        return VMHandle(pid=pid, qmp_socket=spec.qmp_socket, agent_socket=spec.agent_socket)

    def device_set(self, spec: VMSpec) -> list[str]:
        return device_set(spec, self.accel)

    def collect_output(self, vmm_output: Path, vmm_log: Path) -> None:
        _append_lines(vmm_log, _take(vmm_output).splitlines())

    async def save(self, vm: VMHandle, state_file: Path, *, memory_file: bool) -> SavedState:
        """`stop`, then QEMU's migration stream into `state_file` (through a temporary name:
        a failed save leaves no state file behind). QEMU 7.2 has no `file:` URI, so the
        stream goes to a descriptor Ember opened."""
        started = time.monotonic()
        partial = state_file.with_name(state_file.name + ".partial")
        partial.unlink(missing_ok=True)
        try:
            async with await QMPClient.connect(vm.qmp_socket) as qmp:
                await qmp.execute("stop")
                await _migration_setup(qmp, ignore_shared=memory_file)
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                uri = await _stream_uri(qmp, partial, flags, "save")
                await qmp.execute("migrate", {"uri": uri})
                await _wait_migration(qmp, "save")
            os.replace(partial, state_file)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        size = state_file.stat().st_size
        return SavedState(state_file, size, time.monotonic() - started)

    async def restore(self, spec: VMSpec, state_file: Path) -> VMHandle:
        """`-incoming defer`, `migrate-incoming` from `state_file`, wait, `cont`. Nothing is
        written to `state_file`; the memory file is only written once the guest runs."""
        if not state_file.is_file():
            raise Unavailable(f"no saved state at {state_file}")
        handle = await self._launch(spec, incoming=True)
        try:
            async with await QMPClient.connect(handle.qmp_socket) as qmp:
                await _migration_setup(qmp, ignore_shared=spec.memory_file is not None)
                uri = await _stream_uri(qmp, state_file, os.O_RDONLY, "restore")
                await qmp.execute("migrate-incoming", {"uri": uri})
                await _wait_migration(qmp, "restore")
                await qmp.execute("cont")
        except BaseException:
            self.kill(handle)
            await self.wait_exit(handle, timeout=10)
            raise
        _append_lines(spec.vmm_log, [f"restored from {state_file.name}"])
        return handle

    async def change_disk(self, vm: VMHandle, disk: DiskSpec) -> None:
        """Add the new file as a node, make it the slot's child (`blockdev-reopen`), then
        `block_resize` the slot to its own size: that is what makes virtio-blk tell the
        guest its new capacity. The slot's node is reopened writable (a resize needs it;
        a read-only volume comes under a qcow2 layer); the old children are deleted."""
        async with await QMPClient.connect(vm.qmp_socket) as qmp:
            # One child (the current one) after every completed change.
            stale = await _slot_children(qmp, disk.serial)
            node = f"{disk.serial}.{time.monotonic_ns()}"
            files = _HandedFiles(qmp)
            try:
                await qmp.execute("blockdev-add", await _child_node(node, disk, files))
            except BaseException:
                await files.release()
                raise
            try:
                await _reopen_slot(qmp, disk.serial, node)
                size = await _node_size(qmp, disk.serial)
                await qmp.execute("block_resize", {"node-name": disk.serial, "size": size})
            except BaseException:
                # Back onto the old child, so the new file is not left open (and locked).
                with contextlib.suppress(QMPError, Unavailable):
                    if stale:
                        await _reopen_slot(qmp, disk.serial, stale[-1])
                    await qmp.execute("blockdev-del", {"node-name": node})
                raise
            finally:
                await files.release()
            for old in stale:
                await qmp.execute("blockdev-del", {"node-name": old})

    async def balloon_target(self, vm: VMHandle, guest_bytes: int) -> None:
        async with await QMPClient.connect(vm.qmp_socket) as qmp:
            await qmp.execute("balloon", {"value": guest_bytes})

    async def balloon_actual(self, vm: VMHandle) -> int:
        async with await QMPClient.connect(vm.qmp_socket) as qmp:
            return int((await qmp.execute("query-balloon"))["actual"])

    async def quit(self, vm: VMHandle) -> None:
        if not self.is_alive(vm):
            return
        with contextlib.suppress(Unavailable, OSError):
            async with await QMPClient.connect(vm.qmp_socket) as qmp:
                await qmp.execute("quit")
        if not await self.wait_exit(vm, timeout=10):
            self.kill(vm)

    def kill(self, vm: VMHandle) -> None:
        if self.is_alive(vm):
            with contextlib.suppress(ProcessLookupError):
                os.kill(vm.pid, signal.SIGKILL)

    async def pause(self, vm: VMHandle) -> None:
        async with await QMPClient.connect(vm.qmp_socket) as qmp:
            await qmp.execute("stop")

    async def resume(self, vm: VMHandle) -> None:
        """`cont`, after cancelling a save cut short: QEMU keeps the guest paused by a
        migration until that migration has ended."""
        async with await QMPClient.connect(vm.qmp_socket) as qmp:
            if (await qmp.execute("query-migrate")).get("status") in _MIGRATING:
                await qmp.execute("migrate_cancel")
                deadline = time.monotonic() + 10
                while (await qmp.execute("query-migrate")).get("status") in _MIGRATING:
                    if time.monotonic() > deadline:
                        raise Unavailable("QEMU did not cancel the save in 10 s")
                    await asyncio.sleep(0.01)
            await qmp.execute("cont")

    async def run_state(self, vm: VMHandle) -> RunState:
        async with await QMPClient.connect(vm.qmp_socket) as qmp:
            status = (await qmp.execute("query-status")).get("status", "")
        return _RUN_STATES.get(status, RunState.FAILED)

    def is_alive(self, vm: VMHandle) -> bool:
        # The pid may have been reused: require our QMP socket on its command line.
        try:
            cmdline = Path(f"/proc/{vm.pid}/cmdline").read_bytes()
            state = Path(f"/proc/{vm.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z" and str(vm.qmp_socket).encode() in cmdline

    async def wait_exit(self, vm: VMHandle, timeout: float | None = None) -> bool:
        """Woken by a pidfd when the process ends (a standby waits for its VMM to go: a
        polling interval would add to it); polls where pidfds are not available."""
        try:
            pidfd = os.pidfd_open(vm.pid)
        except OSError:
            return await self._poll_exit(vm, timeout)
        try:
            if not self.is_alive(vm):  # checked with the pidfd held: not a reused pid
                return True
            loop = asyncio.get_running_loop()
            ended: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not ended.done():
                    ended.set_result(None)

            loop.add_reader(pidfd, readable)
            try:
                await asyncio.wait_for(ended, timeout)
            except TimeoutError:
                return False
            finally:
                loop.remove_reader(pidfd)
            return True
        finally:
            os.close(pidfd)

    async def _poll_exit(self, vm: VMHandle, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive(vm):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True
