"""The hypervisor interface the instance manager programs against."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol

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
    balloon: bool = False  # a memory balloon the host can inflate at run time


@dataclass(frozen=True, slots=True)
class DiskSpec:
    path: Path
    serial: str  # how the guest finds it: /sys/block/vdX/serial
    readonly: bool = False
    bps_limit: int | None = None  # bytes per second, read+write
    # A volume slot: the device stays, its backing file can be changed while the VM runs
    # (`Hypervisor.change_disk`); the guest finds it by `serial` either way.
    swappable: bool = False
    # "qcow2": a throwaway writable layer over a read-only volume (see ember/volumes).
    format: Literal["raw", "qcow2"] = "raw"


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
    # The workload's output (its stdout and stderr: the `app` log), appended to, never
    # truncated. The guest writes it to a console of its own (hvc0), apart from the kernel's.
    app_log: Path
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
    # The guest kernel's console (ttyS0: its warnings, panics, "reboot: Power down"),
    # appended to; None discards it.
    console_log: Path | None = None
    # Where the VMM writes what it says after start-up (its stderr once detached); read
    # into `vmm_log` by `collect_output`.
    vmm_output: Path | None = None
    # Guest RAM in this file (shared mapping) instead of anonymous memory: a save then
    # writes only device state and leaves the RAM in the file. A restore must use the
    # same choice as the boot it continues.
    memory_file: Path | None = None
    # Map `memory_file` copy-on-write (`share=off`, MAP_PRIVATE) instead of shared: many
    # VMs map one template's RAM file, each page stays one page-cache page until written.
    memory_private: bool = False
    # Free page reporting off: QEMU 7.2 would punch the reported pages out of the memory
    # file even when mapped privately, zeroing them under every other VM mapping it. Part
    # of the device state (a virtio feature): a restore must use the boot's choice.
    free_page_reporting: bool = True
    # Run the VMM confined (its own uid, an empty root, seccomp, a cgroup); None: as root.
    jail: JailSpec | None = None


@dataclass(frozen=True, slots=True)
class SavedState:
    """What `Hypervisor.save` wrote: the device state and, without a memory file, the RAM."""

    state_file: Path
    bytes: int
    seconds: float


class RunState(StrEnum):
    """What a live VMM is doing with its guest (asked at server start: reconcile.py)."""

    RUNNING = "running"
    PAUSED = "paused"  # by a pause, or by a save in progress or finished
    INCOMING = "incoming"  # started for a restore that has not resumed the guest yet
    FAILED = "failed"  # the guest cannot go on (panic, internal or I/O error, shut down)


@dataclass(frozen=True, slots=True)
class VMHandle:
    """Enough to find a running VM again after Ember restarts (store these)."""

    pid: int
    qmp_socket: Path
    agent_socket: Path


# The `hypervisor` values of the Hypeman API (`qemu-microvm` names the board Ember
# always uses for QEMU, so it is the same backend as `qemu`). Declared once, here.
HypervisorName = Literal["cloud-hypervisor", "firecracker", "qemu", "qemu-microvm", "vz"]


class Hypervisor(Protocol):
    name: HypervisorName
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

    async def resume(self, vm: VMHandle) -> None:
        """Let the guest run again; a save still streaming (or finished) is cancelled."""
        ...

    async def run_state(self, vm: VMHandle) -> RunState:
        """Ask the VMM what its guest is doing; Unavailable when it does not answer."""
        ...

    def is_alive(self, vm: VMHandle) -> bool:
        """True if the VM process still runs (and is the one we started)."""
        ...

    async def wait_exit(self, vm: VMHandle, timeout: float | None = None) -> bool:
        """Wait for the VM process to exit; False on timeout."""
        ...

    def collect_output(self, vmm_output: Path, vmm_log: Path) -> None:
        """Once the VM has exited: append what the VMM printed while it ran to ``vmm_log``."""
        ...

    def device_set(self, spec: VMSpec) -> list[str]:
        """The devices a VM of `spec` gets, in order, as the saved state depends on them
        (driver names and the memory backend; no paths, MACs or ids). A saved VM restores
        only into the same set."""
        ...

    async def change_disk(self, vm: VMHandle, disk: DiskSpec) -> None:
        """Back the running VM's swappable disk `disk.serial` with `disk.path` (and
        `format`), and tell the guest its new capacity. Its device mode (`readonly`)
        is the one it booted with."""
        ...

    async def balloon_target(self, vm: VMHandle, guest_bytes: int) -> None:
        """Ask the balloon to leave the guest `guest_bytes` (it gets there over time)."""
        ...

    async def balloon_actual(self, vm: VMHandle) -> int:
        """The memory the balloon leaves the guest now."""
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
