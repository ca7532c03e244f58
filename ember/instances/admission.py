"""Admission: refuse a boot the host cannot take now (429), before anything starts.

Memory and vCPUs already given to running instances are summed against the
host's capacity times an oversubscription ratio (settings), by the same rule
`GET /resources` reports (`capacity.py`). The plan has already refused what no
host state could allow (more than the host has).
"""

from __future__ import annotations

from ember.errors import InsufficientResources
from ember.instances import capacity
from ember.instances.core import InstanceCore
from ember.instances.models import InstanceRecord
from ember.units import format_size


def admit(core: InstanceCore, record: InstanceRecord) -> None:
    """InsufficientResources if booting `record` now would pass the host's limits."""
    others = [r for r in core.repo.all() if r.id != record.id]
    settings, limits = core.settings, core.limits
    memory = capacity.memory(others, limits, settings.memory_oversubscription)
    if record.memory_bytes > memory.available:
        raise InsufficientResources(
            f"size: {format_size(record.memory_bytes)} does not fit: running instances hold "
            f"{format_size(memory.allocated)} of this host's {format_size(memory.effective_limit)}"
            f" (memory x {memory.oversub_ratio}); stop or delete one first"
        )
    cpu = capacity.cpu(others, limits, settings.cpu_oversubscription)
    if record.vcpus > cpu.available:
        raise InsufficientResources(
            f"vcpus: {record.vcpus} more do not fit: running instances hold {cpu.allocated} of "
            f"this host's {cpu.effective_limit} (cores x {cpu.oversub_ratio})"
        )
