"""Answers about the inside of a running guest: `stat` and `stats`."""

from __future__ import annotations

from pydantic import BaseModel

from ember.api.schemas.base import Omitted


class PathInfo(BaseModel):
    """Hypeman's `PathInfo`: only `exists` (and `error`) for a path that is not there."""

    exists: bool
    error: Omitted[str] = None
    is_dir: Omitted[bool] = None
    is_file: Omitted[bool] = None
    is_symlink: Omitted[bool] = None
    link_target: str | None = None
    mode: Omitted[int] = None
    size: Omitted[int] = None


class InstanceStats(BaseModel):
    instance_id: str
    instance_name: str
    allocated_memory_bytes: int
    allocated_vcpus: int
    cpu_seconds: float
    memory_rss_bytes: int
    memory_vms_bytes: int
    memory_utilization_ratio: float | None = None
    network_rx_bytes: int = 0
    network_tx_bytes: int = 0
