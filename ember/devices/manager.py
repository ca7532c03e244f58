"""Registered passthrough devices: `/devices` (Hypeman's shapes).

A device is registered by PCI address; the host must have it, in an IOMMU group
(else no VM could take it over), and only once. Registration does not touch the
device: binding to `vfio-pci` is what attaching it to an instance would do, and
Ember's QEMU board (microvm) has no PCI bus to attach it to yet.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from ember.devices.sysfs import (
    PCI_ADDRESS_RE,
    PciDevice,
    iommu_enabled,
    passthrough_candidates,
    read_device,
)
from ember.errors import Conflict, InvalidArgument, NotFound
from ember.ids import new_id
from ember.images.models import utcnow
from ember.store import Repository, Store, StoredRecord
from ember.validation import validate_name, validate_tags

DeviceType = Literal["gpu", "pci"]


class DeviceRecord(StoredRecord):
    type: DeviceType
    pci_address: str
    vendor_id: str
    device_id: str
    iommu_group: int
    tags: dict[str, str] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


class DeviceManager:
    def __init__(self, store: Store, sys_root: Path = Path("/sys")) -> None:
        self.repo = Repository(store, "devices", DeviceRecord, "device")
        self.sys_root = sys_root

    def available(self) -> list[PciDevice]:
        """Passthrough-capable devices of this host that are not registered yet."""
        taken = {r.pci_address for r in self.repo.all()}
        return [d for d in passthrough_candidates(self.sys_root) if d.pci_address not in taken]

    def find(self) -> list[DeviceRecord]:
        return self.repo.all()

    def get(self, ref: str) -> DeviceRecord:
        """By id or name."""
        record = self.repo.get(ref) or self.repo.by_name(ref)
        if record is None:
            raise NotFound(f"device {ref!r} not found")
        return record

    def host_device(self, record: DeviceRecord) -> PciDevice | None:
        """The device as the host shows it now (None: it is gone, e.g. unplugged)."""
        return read_device(self.sys_root, record.pci_address)

    def create(
        self, pci_address: str, name: str | None = None, tags: dict[str, str] | None = None
    ) -> DeviceRecord:
        if not PCI_ADDRESS_RE.fullmatch(pci_address):
            raise InvalidArgument(
                f"pci_address: {pci_address!r} is not a PCI address like 0000:a2:00.0",
                code="invalid_pci_address",
            )
        name = validate_name(name or "pci-" + pci_address.replace(":", "-").replace(".", "-"))
        tags = validate_tags(tags)
        device = read_device(self.sys_root, pci_address)
        if device is None:
            raise NotFound(f"PCI device {pci_address} not found on this host")
        if device.iommu_group is None:
            raise Conflict(self._no_iommu_reason(pci_address), code="no_iommu_group")
        if any(r.pci_address == pci_address for r in self.repo.all()):
            raise Conflict(f"PCI device {pci_address} is already registered")
        return self.repo.insert(
            DeviceRecord(
                id=new_id(),
                name=name,
                type="gpu" if device.is_gpu else "pci",
                pci_address=pci_address,
                vendor_id=device.vendor_id,
                device_id=device.device_id,
                iommu_group=device.iommu_group,
                tags=tags,
            )
        )

    def delete(self, ref: str) -> None:
        self.repo.delete(self.get(ref).id)

    def _no_iommu_reason(self, pci_address: str) -> str:
        if not iommu_enabled(self.sys_root):
            return (
                f"PCI device {pci_address} cannot be passed through: this host's IOMMU is off "
                "(no /sys/kernel/iommu_groups; boot with intel_iommu=on or amd_iommu=on)"
            )
        return f"PCI device {pci_address} cannot be passed through: it is in no IOMMU group"
