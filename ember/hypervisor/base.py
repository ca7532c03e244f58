"""The hypervisor interface the instance manager programs against."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ember.hypervisor.jail import JailSpec


@dataclass(frozen=True, slots=True)
class Capabilities:
    snapshot: bool = False  # save/restore guest memory (standby)
    hotplug_memory: bool = False
    hotplug_disk: bool = False
    vsock: bool = False
    gpu: bool = False
    disk_io_limit: bool = False
    network_limit: bool = False


@dataclass(frozen=True, slots=True)
class DiskSpec:
    path: Path
    serial: str  # how the guest finds it: /sys/block/vdX/serial
    readonly: bool = False
    bps_limit: int | None = None  # bytes per second, read+write


@dataclass(frozen=True, slots=True)
class NicSpec:
    """One network interface: a TAP device that exists already (see ember/network)."""

    tap: str
    mac: str  # the guest's MAC (locally administered, from the lease)


@dataclass(frozen=True, slots=True)
class VMSpec:
    instance_dir: Path
    kernel: Path
    initrd: Path
    cmdline: str
    vcpus: int
    memory_bytes: int
    serial_log: Path  # appended to, never truncated: it is the app log
    agent_socket: Path
    qmp_socket: Path
    pid_file: Path
    disks: list[DiskSpec] = field(default_factory=list)
    # Network interfaces, eth0 first; empty: the VM has no network device at all.
    nics: list[NicSpec] = field(default_factory=list)
    name: str = "ember"
    # Appended to, never truncated: what the VMM itself says (command line, warnings,
    # why it exited). None discards it.
    vmm_log: Path | None = None
    # Where the VMM writes what it says after start-up (its stderr once detached); read
    # into `vmm_log` by `collect_output`.
    vmm_output: Path | None = None
    # Guest RAM in this file (shared mapping) instead of anonymous memory: a save then
    # writes only device state and leaves the RAM in the file. A restore must use the
    # same choice as the boot it continues.
    memory_file: Path | None = None
    # Run the VMM confined (its own uid, an empty root, seccomp, a cgroup); None: as root.
    jail: JailSpec | None = None


@dataclass(frozen=True, slots=True)
class SavedState:
    """What `Hypervisor.save` wrote: the device state and, without a memory file, the RAM."""

    state_file: Path
    bytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class VMHandle:
    """Enough to find a running VM again after Ember restarts (store these)."""

    pid: int
    qmp_socket: Path
    agent_socket: Path


class Hypervisor(Protocol):
    name: str
    capabilities: Capabilities

    async def start(self, spec: VMSpec) -> VMHandle:
        """Start the VM detached from Ember's process; returns once QEMU runs."""
        ...

    async def quit(self, vm: VMHandle) -> None:
        """Stop the VM now (no guest cooperation), flushing disk caches."""
        ...

    def kill(self, vm: VMHandle) -> None:
        """SIGKILL the VM process (last resort)."""
        ...

    async def pause(self, vm: VMHandle) -> None: ...

    async def resume(self, vm: VMHandle) -> None: ...

    def is_alive(self, vm: VMHandle) -> bool:
        """True if the VM process still runs (and is the one we started)."""
        ...

    async def wait_exit(self, vm: VMHandle, timeout: float | None = None) -> bool:
        """Wait for the VM process to exit; False on timeout."""
        ...

    def collect_output(self, vmm_output: Path, vmm_log: Path) -> None:
        """Once the VM has exited: append what the VMM printed while it ran to ``vmm_log``."""
        ...

    async def save(self, vm: VMHandle, state_file: Path, *, memory_file: bool) -> SavedState:
        """Pause the VM and write its state to `state_file` (all of its RAM too unless the
        VM runs on a `memory_file`); the VM stays paused: quit or resume it after."""
        ...

    async def restore(self, spec: VMSpec, state_file: Path) -> VMHandle:
        """Start a VM from `spec` (the boot's own spec, memory file included) in the state
        `save` wrote, and resume it; on failure nothing of it runs and `state_file` and
        the memory file are left as they were."""
        ...
