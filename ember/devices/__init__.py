"""PCI devices for passthrough: host discovery (sysfs) and registration (see README.md)."""

from ember.devices.manager import DeviceManager, DeviceRecord, DeviceType
from ember.devices.sysfs import PciDevice

__all__ = ["DeviceManager", "DeviceRecord", "DeviceType", "PciDevice"]
