"""Stored records of named snapshots and snapshot schedules.

This package sits below `ember.instances` (which imports it), so nothing here
imports the instance core: the source instance's record is kept as its JSON
(`source`), read back as an `InstanceRecord` by the fork, and the saved VM's
metadata (`SavedVM`) is the model of the instance's own standby too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from ember.hypervisor import HypervisorName
from ember.images.models import utcnow
from ember.snapshots.compression import CompressionConfig, CompressionState

SnapshotKind = Literal["Standby", "Stopped"]


class SavedVM(BaseModel):
    """What a VM needs to go on where it stopped: an instance's standby
    (`InstanceRecord.standby`) or a Standby snapshot's (`SnapshotRecord.memory`). Its files
    are laid out by `SavedVMFiles`, the same in an instance's directory and a snapshot's."""

    created_at: datetime = Field(default_factory=utcnow)
    # Guest RAM stayed in the instance's memory file (x-ignore-shared); otherwise it is in
    # the migration stream with the device state.
    memory_in_file: bool
    state_bytes: int
    memory_bytes: int  # the memory payload as allocated on disk, uncompressed
    # The VM's devices as the hypervisor was given them (`Hypervisor.device_set`): a restore
    # refuses a VM whose devices would differ (None: saved before this was kept).
    devices: list[str] | None = None
    kernel: str  # what the VM was booted with: the restore starts the same
    initrd: str
    cmdline: str
    compression: CompressionConfig | None = None
    compression_state: CompressionState = "none"
    compressed_bytes: int | None = None
    compression_error: str | None = None
    # The saved guest still has the network settings (MAC, IP, hostname) of the VM it was
    # forked from: a restore keeps its TAP down until the agent has set the fork's own.
    foreign_network: bool = False
    # The saved guest is a copy of another VM (a fork, a clone): before its program goes on
    # its kernel's random state is reseeded and it gets its own machine-id and hostname.
    foreign_identity: bool = False
    # A RAM file of another saved VM (a template's) that this one maps copy-on-write
    # (`share=off`): the stream holds only what differs from it, or nothing at all.
    memory_base: str | None = None
    # The workload's processes were stopped (SIGSTOP) before the save (a template): a copy
    # continues them once its CRNG is reseeded, so its program never draws from the
    # random state all copies share.
    workload_stopped: bool = False

    def with_compression(
        self,
        state: CompressionState,
        config: CompressionConfig | None,
        *,
        size: int | None = None,
        error: str | None = None,
    ) -> SavedVM:
        """A copy whose compression fields say `state` (the others are kept)."""
        return self.model_copy(
            update={"compression_state": state, "compression": config,
                    "compressed_bytes": size, "compression_error": error}
        )  # fmt: skip


class VolumeCopy(BaseModel):
    """A read-only volume the source mounted; `overlay_disk` names its private upper disk,
    copied into the snapshot (None: no overlay)."""

    volume_id: str
    mount_path: str
    overlay_size_bytes: int | None = None
    overlay_disk: str | None = None


class NetworkCopy(BaseModel):
    """The source had a network lease with these limits (a fork gets its own lease)."""

    download_bps: int | None = None
    upload_bps: int | None = None


class SnapshotRecord(BaseModel):
    id: str
    name: str | None = None  # unique per source instance
    kind: SnapshotKind
    tags: dict[str, str] = Field(default_factory=dict)
    source_instance_id: str
    source_instance_name: str
    source_hypervisor: HypervisorName
    created_at: datetime = Field(default_factory=utcnow)
    size_bytes: int = 0  # every file of the snapshot, as allocated on disk
    memory: SavedVM | None = None  # Standby snapshots
    volumes: list[VolumeCopy] = Field(default_factory=list)
    network: NetworkCopy | None = None
    # The source InstanceRecord as JSON at capture time (what a fork is made like).
    source: dict[str, Any]
    # Made by the instance's schedule: only these are pruned by its retention.
    scheduled: bool = False
    # A template (ember/templates): a saved VM prepared for cloning; its name is unique
    # among templates and its RAM file is mapped copy-on-write by its clones.
    template: bool = False


class Retention(BaseModel):
    max_count: int = 0  # 0: no count limit
    max_age: str | None = None  # Go duration
    max_age_seconds: float | None = None


class ScheduleRecord(BaseModel):
    instance_id: str
    interval: str  # as given (Go duration)
    interval_seconds: float
    retention: Retention
    name_prefix: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    next_run_at: datetime
    last_run_at: datetime | None = None
    last_snapshot_id: str | None = None
    last_error: str | None = None
