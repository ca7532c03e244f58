"""What the host's PCI devices are, read from sysfs: ids, class, IOMMU group, driver.

Passthrough needs two things the kernel shows under `/sys`: the device sits in an
IOMMU group (`/sys/bus/pci/devices/<addr>/iommu_group`, present only when the
host's IOMMU is on), and it is bound to `vfio-pci` (its `driver` link) when a VM
takes it over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PCI_ADDRESS_RE = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
VFIO_DRIVER = "vfio-pci"
# PCI class codes (class, subclass) of display controllers: VGA and 3D (compute GPUs).
GPU_CLASSES = ("0300", "0302")


@dataclass(frozen=True)
class PciDevice:
    pci_address: str
    vendor_id: str  # hex, no 0x
    device_id: str
    class_code: str  # six hex digits: class, subclass, programming interface
    iommu_group: int | None  # None: the host's IOMMU is off, or the device has none
    driver: str | None  # None: no driver bound

    @property
    def is_gpu(self) -> bool:
        return self.class_code[:4] in GPU_CLASSES

    @property
    def bound_to_vfio(self) -> bool:
        return self.driver == VFIO_DRIVER


def devices_dir(sys_root: Path) -> Path:
    return sys_root / "bus/pci/devices"


def iommu_enabled(sys_root: Path) -> bool:
    """Whether the kernel made IOMMU groups at all (the IOMMU is on)."""
    groups = sys_root / "kernel/iommu_groups"
    return groups.is_dir() and any(groups.iterdir())


def read_device(sys_root: Path, pci_address: str) -> PciDevice | None:
    """The device at `pci_address`, or None if the host has no such device."""
    path = devices_dir(sys_root) / pci_address
    try:
        vendor = _hex(path / "vendor")
        device = _hex(path / "device")
        class_code = _hex(path / "class")
    except OSError:
        return None
    return PciDevice(
        pci_address=pci_address,
        vendor_id=vendor,
        device_id=device,
        class_code=class_code,
        iommu_group=_link_number(path / "iommu_group"),
        driver=_link_name(path / "driver"),
    )


def list_devices(sys_root: Path) -> list[PciDevice]:
    try:
        addresses = sorted(p.name for p in devices_dir(sys_root).iterdir())
    except OSError:
        return []
    found = (read_device(sys_root, a) for a in addresses if PCI_ADDRESS_RE.fullmatch(a))
    return [d for d in found if d is not None]


def passthrough_candidates(sys_root: Path) -> list[PciDevice]:
    """Devices a VM could take over: GPUs (Hypeman's rule) in an IOMMU group."""
    return [d for d in list_devices(sys_root) if d.is_gpu and d.iommu_group is not None]


def _hex(path: Path) -> str:
    return path.read_text().strip().removeprefix("0x")


def _link_name(path: Path) -> str | None:
    try:
        return path.readlink().name
    except OSError:
        return None


def _link_number(path: Path) -> int | None:
    name = _link_name(path)
    return int(name) if name is not None and name.isdigit() else None
