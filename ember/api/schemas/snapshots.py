"""Snapshots and snapshot schedules, built from the domain records field by field."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr

from ember.api.schemas.base import Omitted, name_field
from ember.hypervisor import HypervisorName

# The domain's config, a request type; a field named `compression` would shadow a module.
from ember.snapshots.compression import Algorithm, CompressionState
from ember.snapshots.compression import CompressionConfig as Compression
from ember.snapshots.models import Retention as RetentionRecord
from ember.snapshots.models import ScheduleRecord, SnapshotKind, SnapshotRecord

TargetState = Literal["Stopped", "Standby", "Running"]


class CompressionConfig(BaseModel):
    """Hypeman's `SnapshotCompressionConfig` as answered."""

    enabled: bool
    algorithm: Omitted[Algorithm] = None
    level: Omitted[int] = None

    @classmethod
    def of(cls, c: Compression) -> CompressionConfig:
        return cls(enabled=c.enabled, algorithm=c.algorithm, level=c.level)


class Snapshot(BaseModel):
    """Hypeman's `Snapshot`."""

    id: str
    name: str | None = None
    kind: SnapshotKind
    tags: dict[str, str]
    source_instance_id: str
    source_instance_name: str
    source_hypervisor: HypervisorName
    created_at: datetime
    size_bytes: int
    compression_state: CompressionState
    compression_error: str | None = None
    compression: Omitted[CompressionConfig] = None
    compressed_size_bytes: int | None = None
    uncompressed_size_bytes: int | None = None

    @classmethod
    def of(cls, r: SnapshotRecord) -> Snapshot:
        memory = r.memory
        config = memory.compression if memory else None
        return cls(
            id=r.id,
            name=r.name,
            kind=r.kind,
            tags=r.tags,
            source_instance_id=r.source_instance_id,
            source_instance_name=r.source_instance_name,
            source_hypervisor=r.source_hypervisor,
            created_at=r.created_at,
            size_bytes=r.size_bytes,
            compression_state=memory.compression_state if memory else "none",
            compression_error=memory.compression_error if memory else None,
            compression=CompressionConfig.of(config) if config else None,
            compressed_size_bytes=memory.compressed_bytes if memory else None,
            uncompressed_size_bytes=memory.memory_bytes if memory else None,
        )


class CreateSnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: SnapshotKind
    name: StrictStr | None = None
    tags: dict[str, str] | None = None
    compression: Compression | None = None


class RestoreSnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_state: TargetState | None = None
    target_hypervisor: HypervisorName | None = None


class ForkInstanceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = name_field("The new instance's name")
    from_running: StrictBool = False
    target_state: TargetState | None = None


class ForkSnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = name_field("The new instance's name")
    target_state: TargetState | None = None
    target_hypervisor: HypervisorName | None = None


class Retention(BaseModel):
    max_count: int
    max_age: Omitted[str] = None

    @classmethod
    def of(cls, r: RetentionRecord) -> Retention:
        return cls(max_count=r.max_count, max_age=r.max_age)


class SnapshotSchedule(BaseModel):
    """Hypeman's `SnapshotSchedule`."""

    instance_id: str
    interval: str
    retention: Retention
    name_prefix: str | None = None
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    next_run_at: datetime
    last_run_at: datetime | None = None
    last_snapshot_id: str | None = None
    last_error: str | None = None

    @classmethod
    def of(cls, r: ScheduleRecord) -> SnapshotSchedule:
        return cls(
            instance_id=r.instance_id,
            interval=r.interval,
            retention=Retention.of(r.retention),
            name_prefix=r.name_prefix,
            metadata=r.metadata,
            created_at=r.created_at,
            updated_at=r.updated_at,
            next_run_at=r.next_run_at,
            last_run_at=r.last_run_at,
            last_snapshot_id=r.last_snapshot_id,
            last_error=r.last_error,
        )
