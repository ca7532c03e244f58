"""Hypervisor backends behind one interface; only QEMU exists on this host."""

from __future__ import annotations

import shutil

from ember.errors import InvalidArgument
from ember.hypervisor.accel import detect_accel
from ember.hypervisor.base import Capabilities, DiskSpec, Hypervisor, VMHandle, VMSpec
from ember.hypervisor.qemu import QEMU_BINARY, QemuHypervisor

__all__ = [
    "HYPERVISOR_TYPES",
    "Capabilities",
    "DiskSpec",
    "Hypervisor",
    "VMHandle",
    "VMSpec",
    "get_hypervisor",
]

# The `hypervisor` values of the Hypeman API.
HYPERVISOR_TYPES = ("cloud-hypervisor", "firecracker", "qemu", "vz")
_UNAVAILABLE = {
    "cloud-hypervisor": "Cloud Hypervisor is not installed and needs working KVM",
    "firecracker": "Firecracker is not installed and needs working KVM",
    "vz": "Virtualization.framework exists only on macOS",
}


def get_hypervisor(name: str = "qemu", accel: str = "auto") -> Hypervisor:
    """The backend for a Hypeman ``hypervisor`` value; InvalidArgument if unusable here."""
    if name not in HYPERVISOR_TYPES:
        raise InvalidArgument(
            f"unknown hypervisor {name!r}: expected one of {', '.join(HYPERVISOR_TYPES)}"
        )
    if name != "qemu":
        raise InvalidArgument(
            f"hypervisor '{name}' is not available on this host: {_UNAVAILABLE[name]}; use 'qemu'"
        )
    if shutil.which(QEMU_BINARY) is None:
        raise InvalidArgument(
            f"hypervisor 'qemu' is not available on this host: {QEMU_BINARY} is not installed"
        )
    return QemuHypervisor(detect_accel(accel))
