"""`/snapshots` and an instance's `/snapshots`, `/fork` and `/snapshot-schedule`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.query import tag_filter
from ember.api.routes.instances import LIFECYCLE_ERRORS, Instance, InstanceRef, answer
from ember.instances import State
from ember.snapshots.compression import CompressionConfig
from ember.snapshots.models import ScheduleRecord, SnapshotKind, SnapshotRecord
from ember.snapshots.schedule import ScheduleRequest

router = APIRouter(prefix="/snapshots", tags=["snapshots"], responses=error_responses(400, 404))
instance_router = APIRouter(
    prefix="/instances", tags=["snapshots"], responses=error_responses(400, 404)
)
SnapshotRef = Annotated[
    str, Path(alias="snapshot_id", description="Snapshot id, name or unique id prefix")
]
TargetState = Literal["Stopped", "Standby", "Running"]
HypervisorName = Literal["cloud-hypervisor", "firecracker", "qemu", "qemu-microvm", "vz"]


class Snapshot(BaseModel):
    """Hypeman's `Snapshot`."""

    id: str
    name: str | None = None
    kind: SnapshotKind
    tags: dict[str, str] = {}
    source_instance_id: str
    source_instance_name: str
    source_hypervisor: str
    created_at: datetime
    size_bytes: int
    compression_state: Literal["none", "compressing", "compressed", "error"] | None = None
    compression_error: str | None = None
    compression: CompressionConfig | None = None
    compressed_size_bytes: int | None = None
    uncompressed_size_bytes: int | None = None

    @classmethod
    def of(cls, record: SnapshotRecord) -> Snapshot:
        memory = record.memory
        return cls(
            **record.model_dump(include={
                "id", "name", "kind", "tags", "source_instance_id", "source_instance_name",
                "source_hypervisor", "created_at", "size_bytes",
            }),
            compression_state=memory.compression_state if memory else "none",
            compression_error=memory.compression_error if memory else None,
            compression=memory.compression if memory else None,
            compressed_size_bytes=memory.compressed_bytes if memory else None,
            uncompressed_size_bytes=memory.memory_bytes if memory else None,
        )  # fmt: skip


class CreateSnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: SnapshotKind
    name: StrictStr | None = None
    tags: dict[str, str] | None = None
    compression: CompressionConfig | None = None


class RestoreSnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_state: TargetState | None = None
    target_hypervisor: HypervisorName | None = None


class ForkInstanceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    from_running: StrictBool = False
    target_state: TargetState | None = None


class ForkSnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    target_state: TargetState | None = None
    target_hypervisor: HypervisorName | None = None


class Retention(BaseModel):
    max_count: int | None = None
    max_age: str | None = None


class SnapshotSchedule(BaseModel):
    """Hypeman's `SnapshotSchedule`."""

    instance_id: str
    interval: str
    retention: Retention
    name_prefix: str | None = None
    metadata: dict[str, str] = {}
    created_at: datetime
    updated_at: datetime
    next_run_at: datetime
    last_run_at: datetime | None = None
    last_snapshot_id: str | None = None
    last_error: str | None = None

    @classmethod
    def of(cls, record: ScheduleRecord) -> SnapshotSchedule:
        retention = Retention(max_count=record.retention.max_count,
                              max_age=record.retention.max_age)  # fmt: skip
        return cls(**record.model_dump(exclude={"retention", "interval_seconds"}),
                   retention=retention)  # fmt: skip


def _state(target: TargetState | None) -> State | None:
    return State(target) if target else None


# ---- /snapshots ----------------------------------------------------------------------


@router.get("", response_model=list[Snapshot], summary="List snapshots")
async def list_snapshots(
    request: Request,
    svc: ServicesDep,
    kind: SnapshotKind | None = None,
    name: str | None = None,
    source_instance_id: str | None = None,
) -> list[Snapshot]:
    found = svc.instances.snapshots.store.find(
        kind=kind, name=name, instance_id=source_instance_id, tags=tag_filter(request)
    )
    return [Snapshot.of(s) for s in found]


@router.get("/{snapshot_id}", response_model=Snapshot, summary="Get a snapshot")
async def get_snapshot(ref: SnapshotRef, svc: ServicesDep) -> Snapshot:
    return Snapshot.of(svc.instances.snapshots.get(ref))


@router.delete("/{snapshot_id}", status_code=204, summary="Delete a snapshot")
async def delete_snapshot(ref: SnapshotRef, svc: ServicesDep) -> Response:
    await svc.instances.snapshots.delete(ref)
    return Response(status_code=204)


@router.post(
    "/{snapshot_id}/fork",
    status_code=201,
    response_model=Instance,
    summary="Fork a new instance from a snapshot",
    responses=LIFECYCLE_ERRORS,
)
async def fork_snapshot(ref: SnapshotRef, body: ForkSnapshotRequest, svc: ServicesDep) -> Instance:
    record = await svc.instances.fork_snapshot(
        ref, body.name, _state(body.target_state), body.target_hypervisor
    )
    return answer(svc, record)


# ---- /instances/{id}/... -----------------------------------------------------------------


@instance_router.post(
    "/{id}/snapshots",
    status_code=201,
    response_model=Snapshot,
    summary="Take a snapshot (Standby: memory + disks, the VM paused meanwhile; Stopped: disks)",
    responses=LIFECYCLE_ERRORS,
)
async def create_snapshot(
    ref: InstanceRef, body: CreateSnapshotRequest, svc: ServicesDep
) -> Snapshot:
    record = await svc.instances.create_snapshot(
        ref, body.kind, name=body.name, tags=body.tags, compression=body.compression
    )
    return Snapshot.of(record)


@instance_router.post(
    "/{id}/snapshots/{snapshot_id}/restore",
    response_model=Instance,
    summary="Restore an instance (Stopped or Standby) from one of its snapshots",
    responses=LIFECYCLE_ERRORS,
)
async def restore_snapshot(
    ref: InstanceRef,
    snapshot: SnapshotRef,
    svc: ServicesDep,
    body: RestoreSnapshotRequest | None = None,
) -> Instance:
    body = body or RestoreSnapshotRequest()
    record = await svc.instances.restore_snapshot(
        ref, snapshot, _state(body.target_state), body.target_hypervisor
    )
    return answer(svc, record)


@instance_router.post(
    "/{id}/fork",
    status_code=201,
    response_model=Instance,
    summary="Fork an instance (Stopped, Standby, or Running with from_running)",
    responses=LIFECYCLE_ERRORS,
)
async def fork_instance(ref: InstanceRef, body: ForkInstanceRequest, svc: ServicesDep) -> Instance:
    record = await svc.instances.fork(
        ref, body.name, from_running=body.from_running, target=_state(body.target_state)
    )
    return answer(svc, record)


@instance_router.get(
    "/{id}/snapshot-schedule", response_model=SnapshotSchedule, summary="Get the snapshot schedule"
)
async def get_schedule(ref: InstanceRef, svc: ServicesDep) -> SnapshotSchedule:
    return SnapshotSchedule.of(svc.instances.snapshot_schedule(ref))


@instance_router.put(
    "/{id}/snapshot-schedule",
    response_model=SnapshotSchedule,
    summary="Set the snapshot schedule (interval >= 1m, retention)",
)
async def put_schedule(
    ref: InstanceRef, body: ScheduleRequest, svc: ServicesDep
) -> SnapshotSchedule:
    return SnapshotSchedule.of(svc.instances.set_snapshot_schedule(ref, body))


@instance_router.delete(
    "/{id}/snapshot-schedule", status_code=204, summary="Delete the snapshot schedule"
)
async def delete_schedule(ref: InstanceRef, svc: ServicesDep) -> Response:
    svc.instances.delete_snapshot_schedule(ref)
    return Response(status_code=204)
