"""Confining a VMM: its own uid/gid, an empty root, seccomp, and a cgroup with limits.

QEMU does the confinement itself, after it has opened everything it needs as root
(disks, memory file, logs, sockets, TAP, kernel, initrd): `-runas uid:gid` drops to
an unprivileged user (no capabilities), `-chroot` puts it in an empty directory (no
path on the host can be opened any more; only the descriptors it holds), `-sandbox`
installs its seccomp filter (with no_new_privs). The launching shell first joins
the VM's cgroup, so QEMU and every thread it starts are under the kernel's memory,
CPU, I/O and process-count limits. What cannot be had on a host (no seccomp, no cgroup
controller) is reported by `confinement`, not silently skipped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# `spawn=deny` and `elevateprivileges=deny` are left out: QEMU 7.2 installs its filter
# while parsing options, before -daemonize forks and before -runas calls setgid/setuid,
# so both make QEMU die with "Bad system call" (measured). What they would forbid the
# kernel forbids instead: nothing to exec in the empty root, no capabilities and
# no_new_privs after -runas, and the cgroup's pids limit on forks.
SANDBOX = "on,obsolete=deny,resourcecontrol=deny"
# The controllers the limits need, by cgroup v1 hierarchy name and v2 controller name.
V1_CONTROLLERS = ("memory", "cpu", "blkio", "pids")
V2_CONTROLLERS = ("memory", "cpu", "io", "pids")
CPU_PERIOD_US = 100_000
PREFIX = "ember-"  # a VM's cgroup is <controller root>/ember-<instance id>


@dataclass(frozen=True, slots=True)
class JailLimits:
    """What the kernel allows one VMM."""

    memory_bytes: int  # guest RAM + QEMU's own overhead
    cpus: float  # CPU time, in cores
    cpu_weight: int  # share under contention, in vCPUs
    pids: int  # threads and processes
    io_bps: int | None = None  # read and write, each, on the device of the instance's files
    io_device: str | None = None  # "major:minor" that `io_bps` applies to


@dataclass(frozen=True, slots=True)
class JailSpec:
    """One VMM's confinement: QEMU runs as `uid:gid` inside `root` (an empty directory),
    and joins the cgroup whose `cgroup.procs` files are `procs` before it starts."""

    uid: int
    gid: int
    root: Path
    procs: tuple[Path, ...] = ()


def jail_args(jail: JailSpec | None) -> list[str]:
    if jail is None:
        return []
    return ["-runas", f"{jail.uid}:{jail.gid}", "-chroot", str(jail.root), "-sandbox", SANDBOX]


def cgroup_launcher(jail: JailSpec | None) -> list[str]:
    """A prefix for the VMM's command line that joins the VM's cgroups, then execs it: a
    shell, not a `preexec_fn`, with which Python forks the whole server process at every
    launch instead of using vfork."""
    if jail is None or not jail.procs:
        return []
    joins = " && ".join(f"echo $$ > {shlex.quote(str(path))}" for path in jail.procs)
    return ["/bin/sh", "-c", f'{joins} && exec "$@"', "ember-vmm"]


def empty_root(path: Path) -> Path:
    """The directory every VMM is chrooted into: empty, root's, not writable by anyone else."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o555)
    return path


def block_device_of(path: Path) -> str | None:
    """ "major:minor" of the whole disk under `path`'s filesystem, or None (tmpfs, overlay...)."""
    dev = os.stat(path).st_dev
    sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not sys_dev.exists():
        return None
    if (sys_dev / "partition").exists():  # throttling applies to whole disks
        return (sys_dev.resolve().parent / "dev").read_text().strip()
    return f"{os.major(dev)}:{os.minor(dev)}"


@dataclass(frozen=True, slots=True)
class Cgroups:
    """The cgroup hierarchy of this host: v2 (one tree) or v1 (a tree per controller).
    `missing` names the controllers a limit needs that this host does not offer."""

    version: int
    mounts: dict[str, Path]  # controller -> the root of its hierarchy
    missing: tuple[str, ...] = ()

    def dirs(self, name: str) -> dict[str, Path]:
        # Top-level cgroups, not children of one "ember" group: under CPU contention a
        # group competes as one entity, so every jailed VM together would weigh as much as
        # one unconfined process (measured here: restores 1.2-1.4x slower beside other
        # QEMUs); as peers, each VM weighs its vCPUs.
        return {controller: mount / f"{PREFIX}{name}" for controller, mount in self.mounts.items()}

    def create(self, name: str, limits: JailLimits) -> tuple[Path, ...]:
        """Make the cgroup `name` with `limits` set; returns the `cgroup.procs` to join."""
        dirs = self.dirs(name)
        if self.version == 2:
            self._delegate(next(iter(self.mounts.values())))
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        files = _limit_files_v2(limits) if self.version == 2 else _limit_files_v1(limits)
        _write_limits(dirs, files)
        return tuple(sorted({path / "cgroup.procs" for path in dirs.values()}))

    def _delegate(self, root: Path) -> None:
        """v2: limits in a child need its controllers enabled in its parent."""
        enable = " ".join(f"+{c}" for c in V2_CONTROLLERS if c not in self.missing)
        _write(root / "cgroup.subtree_control", enable)

    def oom_killed(self, name: str) -> bool:
        """Whether the kernel's OOM killer ended a process of cgroup `name`."""
        memory = self.dirs(name).get("memory")
        if memory is None:
            return False
        events = memory / ("memory.events" if self.version == 2 else "memory.oom_control")
        try:
            lines = events.read_text().splitlines()
        except OSError:
            return False
        counts = dict(line.split() for line in lines if len(line.split()) == 2)
        return int(counts.get("oom_kill", "0")) > 0

    def remove(self, name: str) -> None:
        """Remove the cgroup once its processes are gone (idempotent; EBUSY while a
        process is still in it, so a live VM's cgroup is never pulled away)."""
        for path in set(self.dirs(name).values()):
            with contextlib.suppress(FileNotFoundError):
                try:
                    path.rmdir()
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise


def _write(path: Path, value: object) -> None:
    path.write_text(f"{value}\n")


def _limit_files_v1(limits: JailLimits) -> dict[str, list[tuple[str, object]]]:
    quota = int(limits.cpus * CPU_PERIOD_US)
    files: dict[str, list[tuple[str, object]]] = {
        # memsw: swap counts too, where it is accounted (written after the plain limit).
        "memory": [("memory.limit_in_bytes", limits.memory_bytes),
                   ("memory.memsw.limit_in_bytes", limits.memory_bytes)],
        "cpu": [("cpu.cfs_period_us", CPU_PERIOD_US), ("cpu.cfs_quota_us", quota),
                ("cpu.shares", 1024 * limits.cpu_weight)],
        "pids": [("pids.max", limits.pids)],
    }  # fmt: skip
    if limits.io_bps and limits.io_device:
        rate = f"{limits.io_device} {limits.io_bps}"
        files["blkio"] = [(f"blkio.throttle.{kind}_bps_device", rate) for kind in ("read", "write")]
    return files


def _limit_files_v2(limits: JailLimits) -> dict[str, list[tuple[str, object]]]:
    quota = int(limits.cpus * CPU_PERIOD_US)
    files: dict[str, list[tuple[str, object]]] = {
        "memory": [("memory.max", limits.memory_bytes), ("memory.swap.max", 0)],
        "cpu": [("cpu.max", f"{quota} {CPU_PERIOD_US}"),
                ("cpu.weight", min(100 * limits.cpu_weight, 10_000))],
        "pids": [("pids.max", limits.pids)],
    }  # fmt: skip
    if limits.io_bps and limits.io_device:
        bps = limits.io_bps
        files["io"] = [("io.max", f"{limits.io_device} rbps={bps} wbps={bps}")]
    return files


def _write_limits(dirs: dict[str, Path], files: dict[str, list[tuple[str, object]]]) -> None:
    """Each limit whose controller this host has; optional files (swap) only if present."""
    for controller, settings in files.items():
        directory = dirs.get(controller)
        if directory is None:
            continue
        for name, value in settings:
            if (directory / name).exists():
                _write(directory / name, value)


def detect_cgroups(root: Path = CGROUP_ROOT) -> Cgroups | None:
    """v2 when `root` is a unified hierarchy, else the v1 trees mounted under it (a hybrid
    host's `unified/` carries no controllers, so v1 is what limits there)."""
    controllers = root / "cgroup.controllers"
    if controllers.is_file():
        offered = controllers.read_text().split()
        missing = tuple(c for c in V2_CONTROLLERS if c not in offered)
        return Cgroups(2, {c: root for c in V2_CONTROLLERS if c not in missing}, missing)
    mounts = {c: root / c for c in V1_CONTROLLERS if (root / c / "tasks").is_file()}
    if not mounts:
        return None
    missing = tuple(c for c in V1_CONTROLLERS if c not in mounts)
    return Cgroups(1, mounts, missing)


@dataclass(frozen=True, slots=True)
class Confinement:
    """Which confinement this host gives every VMM, and why any part is missing."""

    enabled: bool
    parts: dict[str, str] = field(default_factory=dict)  # in force: part -> how
    missing: dict[str, str] = field(default_factory=dict)  # not in force: part -> why

    def as_dict(self) -> dict[str, object]:
        return {"enabled": self.enabled, "in_force": self.parts, "not_in_force": self.missing}


@cache
def qemu_has_sandbox(binary: str) -> bool:
    """QEMU built with seccomp support (the -sandbox option exists)."""
    try:
        probe = subprocess.run([binary, "-sandbox", "on", "-version"], capture_output=True,
                               timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def kernel_has_seccomp(status: Path = Path("/proc/self/status")) -> bool:
    return any(line.startswith("Seccomp:") for line in status.read_text().splitlines())


def confinement(
    enabled: bool, cgroups: Cgroups | None, *, binary: str, why_off: str = ""
) -> Confinement:
    """What `enabled` gives on this host, part by part."""
    if not enabled:
        return Confinement(False, missing={"jail": why_off or "turned off"})
    parts = {
        "user": "each VMM runs as its own uid/gid (-runas), no capabilities, no_new_privs",
        "filesystem": "chroot into an empty directory after opening its files (-chroot)",
    }
    missing: dict[str, str] = {}
    if not kernel_has_seccomp():
        missing["seccomp"] = "the kernel has no seccomp (no Seccomp: in /proc/self/status)"
    elif not qemu_has_sandbox(binary):
        missing["seccomp"] = f"{binary} was built without seccomp (-sandbox)"
    else:
        parts["seccomp"] = f"-sandbox {SANDBOX}"
    if cgroups is None:
        missing["limits"] = f"no cgroup hierarchy under {CGROUP_ROOT}"
    else:
        have = ", ".join(sorted(cgroups.mounts))
        parts["limits"] = f"cgroup v{cgroups.version} ({have})"
        for controller in cgroups.missing:
            missing[controller] = f"the {controller} cgroup controller is not available"
    return Confinement(True, parts, missing)
