"""`POST /resources/memory/reclaim`: inflate running guests' balloons by the reclaim planner
(ember/reclaim), in Hypeman's `MemoryReclaimRequest` / `MemoryReclaimResponse` shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.hypervisor import HypervisorName
from ember.reclaim import Action, Outcome
from ember.reclaim.controller import DEFAULT_HOLD_SECONDS
from ember.units import parse_duration

router = APIRouter(tags=["host"])


class MemoryReclaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reclaim_bytes: StrictInt = Field(
        ge=0, description="Total bytes of guest memory to reclaim across eligible VMs"
    )
    hold_for: str | None = Field(
        default=None,
        description="How long the balloons stay inflated (Go duration); default 5m. "
        "Ember: reclaim_bytes 0 ends the hold",
    )
    dry_run: StrictBool = False
    reason: str | None = Field(default=None, max_length=256)


class MemoryReclaimAction(BaseModel):
    instance_id: str
    instance_name: str
    hypervisor: HypervisorName
    assigned_memory_bytes: int
    protected_floor_bytes: int
    previous_target_guest_memory_bytes: int
    planned_target_guest_memory_bytes: int
    target_guest_memory_bytes: int
    applied_reclaim_bytes: int
    status: str = Field(description="planned, applied, partial, unchanged or error")
    error: str | None = None

    @classmethod
    def of(cls, action: Action) -> MemoryReclaimAction:
        guest, target = action.guest, action.target
        return cls(
            instance_id=guest.instance_id,
            instance_name=guest.instance_name,
            hypervisor=guest.hypervisor,
            assigned_memory_bytes=guest.assigned_bytes,
            protected_floor_bytes=target.floor_bytes,
            previous_target_guest_memory_bytes=target.previous_bytes,
            planned_target_guest_memory_bytes=target.planned_bytes,
            target_guest_memory_bytes=action.actual_bytes,
            applied_reclaim_bytes=action.applied_bytes,
            status=action.status,
            error=action.error,
        )


class MemoryReclaimResponse(BaseModel):
    requested_reclaim_bytes: int
    planned_reclaim_bytes: int
    applied_reclaim_bytes: int
    hold_until: datetime | None = None
    host_available_bytes: int
    host_pressure_state: Literal["healthy", "pressure"]
    actions: list[MemoryReclaimAction]

    @classmethod
    def of(cls, outcome: Outcome) -> MemoryReclaimResponse:
        return cls(
            requested_reclaim_bytes=outcome.requested_bytes,
            planned_reclaim_bytes=outcome.planned_bytes,
            applied_reclaim_bytes=outcome.applied_bytes,
            hold_until=outcome.hold_until,
            host_available_bytes=outcome.host.available_bytes,
            host_pressure_state="pressure" if outcome.pressure else "healthy",
            actions=[MemoryReclaimAction.of(a) for a in outcome.actions],
        )


@router.post(
    "/resources/memory/reclaim",
    response_model=MemoryReclaimResponse,
    response_model_exclude_none=True,
    summary="Trigger proactive guest memory reclaim",
    responses=error_responses(400),
)
async def reclaim_memory(body: MemoryReclaimRequest, svc: ServicesDep) -> MemoryReclaimResponse:
    hold = DEFAULT_HOLD_SECONDS
    if body.hold_for is not None:
        hold = parse_duration(body.hold_for, field="hold_for")
    outcome = await svc.memory.reclaim(
        body.reclaim_bytes, hold_seconds=hold, dry_run=body.dry_run, reason=body.reason
    )
    return MemoryReclaimResponse.of(outcome)
