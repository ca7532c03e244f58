"""`/snapshots` and an instance's `/snapshots`, `/fork` and `/snapshot-schedule`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.query import tag_filter
from ember.api.routes.instances import LIFECYCLE_ERRORS, InstanceRef, answer
from ember.api.schemas.instances import Instance
from ember.api.schemas.snapshots import (
    CreateSnapshotRequest,
    ForkInstanceRequest,
    ForkSnapshotRequest,
    RestoreSnapshotRequest,
    Snapshot,
    SnapshotSchedule,
    TargetState,
)
from ember.instances import State
from ember.snapshots.models import SnapshotKind
from ember.snapshots.schedule import ScheduleRequest

router = APIRouter(prefix="/snapshots", tags=["snapshots"], responses=error_responses(400, 404))
instance_router = APIRouter(
    prefix="/instances", tags=["snapshots"], responses=error_responses(400, 404)
)
SnapshotRef = Annotated[
    str, Path(alias="snapshot_id", description="Snapshot id, name or unique id prefix")
]


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
    found = svc.instances.find_snapshots(
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
