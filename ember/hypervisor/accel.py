"""Choose QEMU's accelerator: KVM where it really works, TCG otherwise.

The KVM on these hosts is PVM (``/sys/module/kvm_pvm``, no vmx/svm flag): a
stock guest kernel hangs under it, so such a host must use TCG even though
``/dev/kvm`` exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ember.errors import InvalidArgument

Accel = Literal["kvm", "tcg"]


def hardware_kvm_usable(root: Path = Path("/")) -> bool:
    if (root / "sys/module/kvm_pvm").exists():
        return False
    if not os.access(root / "dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        flags = (root / "proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(
        line.startswith("flags") and ({"vmx", "svm"} & set(line.split()))
        for line in flags.splitlines()
    )


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator QEMU runs with, and why (served by `GET /capabilities`)."""

    accel: Accel
    reason: str


def choose_accel(requested: str = "auto", root: Path = Path("/")) -> AccelChoice:
    """Resolve ``EMBER_ACCEL`` (``kvm``, ``tcg`` or ``auto``): the one place that decides."""
    if requested in ("kvm", "tcg"):
        return AccelChoice("kvm" if requested == "kvm" else "tcg", f"EMBER_ACCEL={requested}")
    if requested != "auto":
        raise InvalidArgument(f"unknown accelerator {requested!r}: use kvm, tcg or auto")
    problem = kvm_problem(root)
    if problem is None:
        return AccelChoice("kvm", "hardware virtualization (vmx/svm) and /dev/kvm are usable")
    return AccelChoice("tcg", problem.why)


@dataclass(frozen=True)
class KvmProblem:
    """Why hardware KVM cannot be used here, and what would change that."""

    why: str
    fix: str


def kvm_problem(root: Path = Path("/")) -> KvmProblem | None:
    """None when hardware KVM is usable (the tests of `hardware_kvm_usable`, explained)."""
    if (root / "sys/module/kvm_pvm").exists():
        return KvmProblem(
            "this host's KVM is PVM (kvm_pvm), under which a stock guest kernel hangs",
            "none needed: TCG is right on a PVM host; a host with VT-x/AMD-V boots faster",
        )
    if not (root / "dev/kvm").exists():
        return KvmProblem(
            "/dev/kvm does not exist",
            "enable VT-x/AMD-V (or nested virtualization), modprobe kvm_intel or kvm_amd",
        )
    if not os.access(root / "dev/kvm", os.R_OK | os.W_OK):
        return KvmProblem(
            "/dev/kvm is not readable and writable by this user",
            "run as root, or add this user to the kvm group",
        )
    if not hardware_kvm_usable(root):
        return KvmProblem(
            "the CPU flags show neither vmx nor svm",
            "enable VT-x/AMD-V in the firmware, or nested virtualization in the hypervisor",
        )
    return None


def detect_accel(requested: str = "auto", root: Path = Path("/")) -> Accel:
    """The accelerator alone (see `choose_accel`)."""
    return choose_accel(requested, root).accel


def host_tsc_khz(cpuinfo: str | None = None) -> int | None:
    """The host's TSC rate in kHz, which is also the guest's TSC rate under TCG."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            try:
                return round(float(value) * 1000)
            except ValueError:
                return None
    return None


def guest_kernel_args(accel: Accel) -> list[str]:
    """Extra guest cmdline arguments the accelerator needs.

    Under TCG the guest kernel calibrates its TSC against microvm's PIT; on a
    busy host that calibration fails now and then and the kernel hangs with
    no usable clock. Telling it the TSC rate (TCG's TSC ticks with the host's)
    skips the calibration; it also boots about half a second faster.
    """
    if accel == "tcg" and (khz := host_tsc_khz()):
        return [f"tsc_early_khz={khz}", "tsc=reliable"]
    return []
