"""What the host has, what instances hold, what is left: the figures of `GET /resources`.

CPU and memory use the same rule as admission (`admission.py`): the vCPUs and
memory of instances whose VMM is up, against the host's cores and memory
times the oversubscription ratios of the settings. Disk is the filesystem of
the data directory as it really is (used and free). Disk I/O and network have
no host figure Ember can trust (a virtual NIC reports no speed; a disk's
throughput depends on the load), so their capacity is 0 (`source` says so)
and what is listed is the sum of the per-instance limits.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ember.config import Settings
from ember.instances.models import InstanceRecord
from ember.instances.plan import HostLimits
from ember.instances.state import ACTIVE


@dataclass(frozen=True, slots=True)
class Status:
    type: str
    capacity: int
    oversub_ratio: float
    effective_limit: int
    allocated: int
    available: int
    source: str


@dataclass(frozen=True, slots=True)
class Allocation:
    instance_id: str
    instance_name: str
    cpu: int | None
    memory_bytes: int | None
    disk_bytes: int
    disk_io_bps: int | None
    network_download_bps: int | None
    network_upload_bps: int | None


@dataclass(frozen=True, slots=True)
class Usage:
    """Every figure of `GET /resources`."""

    cpu: Status
    memory: Status
    disk: Status
    disk_io: Status
    network: Status
    allocations: list[Allocation]


def usage(
    records: list[InstanceRecord],
    limits: HostLimits,
    settings: Settings,
    rates: Callable[[InstanceRecord], tuple[int | None, int | None]],
) -> Usage:
    """The host's figures; `rates` gives an instance's (download, upload) limits."""
    up = {r.id for r in active(records)}
    allocations = [_allocation(r, r.id in up, *rates(r)) for r in records]
    running = [a for a in allocations if a.instance_id in up]
    return Usage(
        cpu=cpu(records, limits, settings.cpu_oversubscription),
        memory=memory(records, limits, settings.memory_oversubscription),
        disk=disk(settings.data_dir),
        disk_io=limits_only("disk_io", sum(a.disk_io_bps or 0 for a in running)),
        network=limits_only("network", sum(a.network_download_bps or 0 for a in running)),
        allocations=allocations,
    )


def _allocation(
    record: InstanceRecord, up: bool, download: int | None, upload: int | None
) -> Allocation:
    """What an instance holds: CPU and memory only while its VMM is up."""
    return Allocation(
        instance_id=record.id,
        instance_name=record.name,
        cpu=record.vcpus if up else None,
        memory_bytes=record.memory_bytes if up else None,
        disk_bytes=record.overlay_bytes,
        disk_io_bps=record.disk_io_bps,
        network_download_bps=download,
        network_upload_bps=upload,
    )


def _status(kind: str, capacity: int, ratio: float, allocated: int, source: str) -> Status:
    limit = int(capacity * ratio)
    return Status(kind, capacity, ratio, limit, allocated, max(0, limit - allocated), source)


def active(records: list[InstanceRecord]) -> list[InstanceRecord]:
    return [r for r in records if r.state in ACTIVE]


def cpu(records: list[InstanceRecord], limits: HostLimits, ratio: float) -> Status:
    used = sum(r.vcpus for r in active(records))
    return _status("cpu", limits.host_cpus, ratio, used, "host cores (os.cpu_count)")


def memory(records: list[InstanceRecord], limits: HostLimits, ratio: float) -> Status:
    used = sum(r.memory_bytes for r in active(records))
    return _status("memory", limits.memory_bytes, ratio, used, "host physical memory")


def disk(data_dir: Path) -> Status:
    usage = shutil.disk_usage(data_dir)
    return Status(
        "disk", usage.total, 1.0, usage.total, usage.used, usage.free, f"filesystem of {data_dir}"
    )


def limits_only(kind: str, allocated: int) -> Status:
    return Status(kind, 0, 1.0, 0, allocated, 0, "no host capacity measured: sum of limits")
