"""Hypervisor backends behind one interface; only QEMU exists on this host.

`resolve_hypervisors` runs once at server start: it detects the accelerator
and builds every backend this host can run, and remembers for the others why
they cannot run. Everything else asks the resulting `Hypervisors` map.
"""

from __future__ import annotations

import shutil
from typing import get_args

from ember.errors import InvalidArgument
from ember.hypervisor.accel import AccelChoice, choose_accel
from ember.hypervisor.base import (
    Capabilities,
    DiskSpec,
    Hypervisor,
    HypervisorName,
    NicSpec,
    RunState,
    VMHandle,
    VMSpec,
)
from ember.hypervisor.jail import JailSpec
from ember.hypervisor.qemu import QEMU_BINARY, QemuHypervisor

__all__ = [
    "HYPERVISOR_NAMES",
    "Capabilities",
    "DiskSpec",
    "Hypervisor",
    "HypervisorName",
    "Hypervisors",
    "JailSpec",
    "NicSpec",
    "RunState",
    "VMHandle",
    "VMSpec",
    "resolve_hypervisors",
]

HYPERVISOR_NAMES: tuple[str, ...] = get_args(HypervisorName)
DEFAULT_HYPERVISOR = "qemu"
_ALIASES = {"qemu-microvm": "qemu"}
_NOT_HERE = {
    "cloud-hypervisor": "Cloud Hypervisor is not installed and needs working KVM",
    "firecracker": "Firecracker is not installed and needs working KVM",
    "vz": "Virtualization.framework exists only on macOS",
}


class Hypervisors:
    """The backends this server can run, by name, and why the others cannot."""

    def __init__(
        self, backends: dict[str, Hypervisor], unavailable: dict[str, str], accel: AccelChoice
    ) -> None:
        self._backends = backends
        self.unavailable = unavailable
        self.accel = accel  # what QEMU runs with, and why

    def backend(self, name: str) -> Hypervisor | None:
        """The backend for a Hypeman `hypervisor` value, or None where it cannot run."""
        return self._backends.get(_ALIASES.get(name, name))

    def unavailable_reason(self, name: str) -> str:
        return self.unavailable.get(_ALIASES.get(name, name), "not available on this host")

    def get(self, name: str | None = None) -> Hypervisor:
        """The backend for a Hypeman `hypervisor` value; InvalidArgument if unusable here."""
        requested = name or DEFAULT_HYPERVISOR
        if requested not in HYPERVISOR_NAMES:
            raise InvalidArgument(
                f"hypervisor: unknown {requested!r}; expected one of {', '.join(HYPERVISOR_NAMES)}"
            )
        canonical = _ALIASES.get(requested, requested)
        backend = self._backends.get(canonical)
        if backend is None:
            raise InvalidArgument(
                f"hypervisor: '{requested}' is not available on this host: "
                f"{self.unavailable[canonical]}"
            )
        return backend

    @property
    def available(self) -> dict[str, Hypervisor]:
        return dict(self._backends)


def resolve_hypervisors(accel: str = "auto") -> Hypervisors:
    """Detect the accelerator once and build the backends this host can run."""
    backends: dict[str, Hypervisor] = {}
    unavailable = {name: f"{why}; use 'qemu'" for name, why in _NOT_HERE.items()}
    choice = choose_accel(accel)
    if shutil.which(QEMU_BINARY) is None:
        unavailable["qemu"] = f"{QEMU_BINARY} is not installed"
    else:
        backends["qemu"] = QemuHypervisor(choice.accel)
    return Hypervisors(backends, unavailable, choice)
