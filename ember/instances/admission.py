"""Admission: refuse a boot the host cannot take now (429), before anything starts.

Memory and vCPUs already given to running instances are summed against the
host's capacity times an oversubscription ratio (settings). The plan has
already refused what no host state could allow (more than the host has).
"""

from __future__ import annotations

from ember.errors import InsufficientResources
from ember.instances.core import InstanceCore
from ember.instances.models import InstanceRecord
from ember.instances.state import ACTIVE
from ember.units import format_size


def admit(core: InstanceCore, record: InstanceRecord) -> None:
    """InsufficientResources if booting `record` now would pass the host's limits."""
    running = [r for r in core.repo.all() if r.state in ACTIVE and r.id != record.id]
    settings, limits = core.settings, core.limits
    memory_limit = int(limits.memory_bytes * settings.memory_oversubscription)
    memory_used = sum(r.memory_bytes for r in running)
    if memory_used + record.memory_bytes > memory_limit:
        raise InsufficientResources(
            f"size: {format_size(record.memory_bytes)} does not fit: running instances hold "
            f"{format_size(memory_used)} of this host's {format_size(memory_limit)} "
            f"(memory x {settings.memory_oversubscription}); stop or delete one first"
        )
    cpu_limit = int(limits.host_cpus * settings.cpu_oversubscription)
    cpu_used = sum(r.vcpus for r in running)
    if cpu_used + record.vcpus > cpu_limit:
        raise InsufficientResources(
            f"vcpus: {record.vcpus} more do not fit: running instances hold {cpu_used} of "
            f"this host's {cpu_limit} (cores x {settings.cpu_oversubscription})"
        )
