"""`/devices` answers, from the registered records and the host's sysfs view."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ember.api.schemas.base import name_field
from ember.devices import DeviceRecord, DeviceType, PciDevice
from ember.devices.sysfs import PCI_ADDRESS_RE

PCI_PATTERN = PCI_ADDRESS_RE.pattern


class Device(BaseModel):
    id: str
    name: str
    type: DeviceType
    tags: dict[str, str]
    pci_address: str
    vendor_id: str
    device_id: str
    iommu_group: int
    bound_to_vfio: bool
    attached_to: str | None = None  # no instance takes a device on this server yet
    created_at: datetime

    @classmethod
    def of(cls, r: DeviceRecord, host: PciDevice | None) -> Device:
        return cls(
            id=r.id,
            name=r.name,
            type=r.type,
            tags=r.tags,
            pci_address=r.pci_address,
            vendor_id=r.vendor_id,
            device_id=r.device_id,
            iommu_group=r.iommu_group,
            bound_to_vfio=host is not None and host.bound_to_vfio,
            created_at=r.created_at,
        )


class AvailableDevice(BaseModel):
    pci_address: str
    vendor_id: str
    device_id: str
    iommu_group: int
    current_driver: str | None = None

    @classmethod
    def of(cls, d: PciDevice) -> AvailableDevice:
        assert d.iommu_group is not None  # candidates are in a group
        return cls(
            pci_address=d.pci_address,
            vendor_id=d.vendor_id,
            device_id=d.device_id,
            iommu_group=d.iommu_group,
            current_driver=d.driver,
        )


class CreateDeviceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pci_address: StrictStr = Field(
        description="PCI address, e.g. 0000:a2:00.0", json_schema_extra={"pattern": PCI_PATTERN}
    )
    name: StrictStr | None = name_field("Default: pci-<address with dashes>", None)
    tags: dict[str, str] | None = None
