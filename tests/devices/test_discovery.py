"""Discovery and registration over sysfs trees laid out as the kernel lays them out,
for the cases this host cannot give (IOMMU groups, a GPU on vfio-pci), and over this
host's own sysfs through the official client (no IOMMU here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypeman import ConflictError, Hypeman, NotFoundError

from ember.devices import DeviceManager
from ember.devices.sysfs import list_devices, passthrough_candidates
from ember.errors import Conflict, InvalidArgument, NotFound
from ember.store import Store
from ember.testkit.ember_server import EmberServer

GPU = "0000:a2:00.0"
NIC = "0000:03:00.0"
LONE = "0000:04:00.0"  # no IOMMU group


def add_device(
    root: Path, address: str, vendor: str, device: str, cls: str,
    group: int | None, driver: str | None,
) -> None:  # fmt: skip
    path = root / "devices" / f"pci0000:00/{address}"
    path.mkdir(parents=True)
    for name, value in (("vendor", vendor), ("device", device), ("class", cls)):
        (path / name).write_text(f"0x{value}\n")
    if group is not None:
        (root / f"kernel/iommu_groups/{group}/devices").mkdir(parents=True, exist_ok=True)
        (path / "iommu_group").symlink_to(root / f"kernel/iommu_groups/{group}")
    if driver is not None:
        (root / f"bus/pci/drivers/{driver}").mkdir(parents=True, exist_ok=True)
        (path / "driver").symlink_to(root / f"bus/pci/drivers/{driver}")
    (root / "bus/pci/devices").mkdir(parents=True, exist_ok=True)
    (root / "bus/pci/devices" / address).symlink_to(path)


@pytest.fixture
def sys_root(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    add_device(root, GPU, "10de", "27b8", "030200", 82, "vfio-pci")
    add_device(root, NIC, "8086", "1521", "020000", 7, "igb")
    add_device(root, LONE, "1af4", "1000", "030000", None, None)
    return root


def test_discovery_reads_ids_groups_and_drivers(sys_root: Path) -> None:
    devices = {d.pci_address: d for d in list_devices(sys_root)}
    assert devices[GPU].vendor_id == "10de" and devices[GPU].iommu_group == 82
    assert devices[GPU].bound_to_vfio and devices[GPU].is_gpu
    assert devices[NIC].driver == "igb" and not devices[NIC].is_gpu
    assert devices[LONE].iommu_group is None and devices[LONE].driver is None
    # A VGA controller outside any IOMMU group cannot be passed through.
    assert [d.pci_address for d in passthrough_candidates(sys_root)] == [GPU]


def test_registration_checks_the_host(sys_root: Path, tmp_path: Path) -> None:
    manager = DeviceManager(Store(tmp_path / "ember.db"), sys_root)
    record = manager.create(GPU, tags={"team": "ml"})
    assert (record.name, record.type, record.iommu_group) == ("pci-0000-a2-00-0", "gpu", 82)
    assert manager.available() == []  # registered devices are no longer offered
    assert manager.get(record.name).id == record.id
    with pytest.raises(Conflict, match="already registered"):
        manager.create(GPU, name="again")
    with pytest.raises(Conflict, match="IOMMU"):
        manager.create(LONE)
    with pytest.raises(NotFound):
        manager.create("0000:ff:00.0")
    with pytest.raises(InvalidArgument, match="pci_address"):
        manager.create("gpu0")
    assert manager.create(NIC, name="nic").type == "pci"
    manager.delete("nic")
    with pytest.raises(NotFound):
        manager.get("nic")


@pytest.mark.server  # starts a real `ember serve`
def test_the_official_client_sees_this_hosts_devices(ember_server: EmberServer) -> None:
    """This host has no IOMMU: nothing to pass through, and registering says why."""
    client = Hypeman(base_url=ember_server.url, api_key=ember_server.token())
    assert client.devices.list_available() == []
    assert client.devices.list() == []
    lone = next(
        (d.name for d in sorted(Path("/sys/bus/pci/devices").glob("*"))
         if not (d / "iommu_group").exists()),
        None,
    )  # fmt: skip
    if lone is None:
        pytest.skip("every PCI device of this host is in an IOMMU group")
    with pytest.raises(ConflictError, match="IOMMU"):
        client.devices.create(pci_address=lone)
    with pytest.raises(NotFoundError):
        client.devices.create(pci_address="0000:ff:1f.7")
