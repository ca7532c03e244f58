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
from dataclasses import dataclass
from pathlib import Path

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
