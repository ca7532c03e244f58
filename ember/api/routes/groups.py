"""`/service-groups` (Ember extension): instances behind published services, balanced
under soft and hard limits, scaled to zero and woken by the next request."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.groups import CreateServiceGroupRequest, Member, ScaleToZero, Service, ServiceGroupRecord
from ember.groups.autoscale import (
    AutoscaleConfigRequest,
    AutoscalePolicy,
    AutoscalePolicyRequest,
    AutoscaleRecord,
    Decision,
)
from ember.instances.stopreason import describe

router = APIRouter(
    prefix="/service-groups",
    tags=["service-groups (Ember extension)"],
    responses=error_responses(400, 404),
)
GroupRef = Annotated[str, Path(alias="id", description="Service group id, name or id prefix")]


class GroupInstance(BaseModel):
    id: str
    name: str
    state: str
    scale_to_zero: ScaleToZero | None = None
    stop_reason: int | None = Field(
        default=None, description="Unikraft Cloud's bitmask: 16 forced, 8 user, 4 platform, "
        "2 app, 1 kernel",
    )  # fmt: skip
    stop_reason_text: str | None = None
    exit_code: int | None = None

    @classmethod
    def of(cls, member: Member) -> GroupInstance:
        instance = member.instance
        reason = instance.stop_reason
        return cls(
            id=instance.id,
            name=instance.name,
            state=instance.state,
            scale_to_zero=member.record.scale_to_zero,
            stop_reason=reason,
            stop_reason_text=describe(reason, instance.exit_code) if reason is not None else None,
            exit_code=instance.exit_code,
        )


class ServiceGroup(BaseModel):
    id: str
    name: str
    created_at: datetime
    persistent: bool = Field(description="False: made by an instance create, deleted with it")
    services: list[Service]
    domains: list[str]
    soft_limit: int
    hard_limit: int
    autokill_time_ms: int | None = None
    instances: list[GroupInstance]

    @classmethod
    def of(cls, record: ServiceGroupRecord, members: list[Member]) -> ServiceGroup:
        return cls(
            id=record.id,
            name=record.name,
            created_at=record.created_at,
            persistent=record.persistent,
            services=record.services,
            domains=[d.name for d in record.domains],
            soft_limit=record.soft_limit,
            hard_limit=record.hard_limit,
            autokill_time_ms=record.autokill.time_ms if record.autokill else None,
            instances=[GroupInstance.of(m) for m in members],
        )


def _answer(svc: ServicesDep, record: ServiceGroupRecord) -> ServiceGroup:
    return ServiceGroup.of(record, svc.groups.members_of(record.id))


@router.post(
    "",
    status_code=201,
    response_model=ServiceGroup,
    summary="Create a service group",
    responses=error_responses(409),
)
async def create_group(body: CreateServiceGroupRequest, svc: ServicesDep) -> ServiceGroup:
    return _answer(svc, await svc.groups.create(body))


@router.get("", response_model=list[ServiceGroup], summary="List service groups")
async def list_groups(svc: ServicesDep) -> list[ServiceGroup]:
    return [_answer(svc, record) for record in svc.groups.find()]


@router.get("/{id}", response_model=ServiceGroup, summary="Get a service group")
async def get_group(ref: GroupRef, svc: ServicesDep) -> ServiceGroup:
    return _answer(svc, svc.groups.get(ref))


@router.delete(
    "/{id}",
    status_code=204,
    summary="Delete an empty service group",
    responses=error_responses(409),
)
async def delete_group(ref: GroupRef, svc: ServicesDep) -> Response:
    await svc.groups.delete(ref)
    return Response(status_code=204)


# ---- autoscale ---------------------------------------------------------------------------

PolicyName = Annotated[str, Path(alias="name", description="Policy name")]


class AutoscaleConfiguration(BaseModel):
    """A group's autoscale configuration (Unikraft Cloud's fields, plus `scale_in`)."""

    group_id: str
    group_name: str
    enabled: bool = True
    min_size: int
    max_size: int
    warmup_time_ms: int
    cooldown_time_ms: int
    create_args: dict[str, Any]
    scale_in: str
    policies: list[AutoscalePolicy]
    last_scaled_at: datetime | None = None

    @classmethod
    def of(cls, group: ServiceGroupRecord, record: AutoscaleRecord) -> AutoscaleConfiguration:
        return cls(
            group_id=group.id,
            group_name=group.name,
            min_size=record.min_size,
            max_size=record.max_size,
            warmup_time_ms=record.warmup_time_ms,
            cooldown_time_ms=record.cooldown_time_ms,
            create_args=record.create_args,
            scale_in=record.scale_in,
            policies=record.policies,
            last_scaled_at=record.last_scaled_at,
        )


@router.put(
    "/{id}/autoscale",
    response_model=AutoscaleConfiguration,
    summary="Set a group's autoscale configuration (create or replace)",
)
async def put_autoscale(
    ref: GroupRef, body: AutoscaleConfigRequest, svc: ServicesDep
) -> AutoscaleConfiguration:
    svc.autoscale.configure(ref, body)
    return AutoscaleConfiguration.of(*svc.autoscale.get(ref))


@router.get(
    "/{id}/autoscale",
    response_model=AutoscaleConfiguration,
    summary="Get a group's autoscale configuration",
)
async def get_autoscale(ref: GroupRef, svc: ServicesDep) -> AutoscaleConfiguration:
    return AutoscaleConfiguration.of(*svc.autoscale.get(ref))


@router.delete(
    "/{id}/autoscale", status_code=204, summary="Turn autoscale off (members stay as they are)"
)
async def delete_autoscale(ref: GroupRef, svc: ServicesDep) -> Response:
    svc.autoscale.delete(ref)
    return Response(status_code=204)


@router.post(
    "/{id}/autoscale/policies",
    status_code=201,
    response_model=AutoscalePolicy,
    summary="Add a step policy",
    responses=error_responses(409),
)
async def add_policy(
    ref: GroupRef, body: AutoscalePolicyRequest, svc: ServicesDep
) -> AutoscalePolicy:
    return svc.autoscale.add_policy(ref, body)


@router.get(
    "/{id}/autoscale/policies/{name}", response_model=AutoscalePolicy, summary="Get a policy"
)
async def get_policy(ref: GroupRef, name: PolicyName, svc: ServicesDep) -> AutoscalePolicy:
    return svc.autoscale.policy(ref, name)


@router.delete("/{id}/autoscale/policies/{name}", status_code=204, summary="Delete a policy")
async def delete_policy(ref: GroupRef, name: PolicyName, svc: ServicesDep) -> Response:
    svc.autoscale.delete_policy(ref, name)
    return Response(status_code=204)


@router.get(
    "/{id}/autoscale/decisions",
    response_model=list[Decision],
    summary="The autoscaler's decisions, newest first, each with its reason",
)
async def autoscale_decisions(
    ref: GroupRef,
    svc: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=200, description="At most this many")] = 50,
) -> list[Decision]:
    return svc.autoscale.decisions(ref, limit)
