"""`/instances/{id}/egress`: an instance's mediated egress (Ember extension).

The policy is read and replaced while the VM runs; the flow log lists the
connections the proxy judged. Credentials' real values are never answered.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.services import Services
from ember.egress import EgressManager, EgressPolicy, EgressView, Flow
from ember.errors import NotFound

router = APIRouter(prefix="/instances", tags=["egress"], responses=error_responses(400, 404))
InstanceRef = Annotated[str, Path(alias="id", description="Instance id, name or unique id prefix")]


class EgressUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: EgressPolicy


def _egress(svc: Services) -> EgressManager:
    if svc.egress is None:
        raise NotFound("networking is off on this server: no mediated egress",
                       code="egress_not_enabled")  # fmt: skip
    return svc.egress


@router.get(
    "/{id}/egress",
    response_model=EgressView,
    summary="An instance's mediated egress: mode, policy, credentials (no values), CA "
    "(Ember extension)",
)
async def get_egress(ref: InstanceRef, svc: ServicesDep) -> EgressView:
    return _egress(svc).view(svc.instances.get(ref).id)


@router.patch(
    "/{id}/egress",
    response_model=EgressView,
    summary="Replace an instance's egress policy, also while it runs (Ember extension)",
)
async def update_egress(ref: InstanceRef, body: EgressUpdate, svc: ServicesDep) -> EgressView:
    """Holds from the next connection; connections already open go on."""
    egress, instance_id = _egress(svc), svc.instances.get(ref).id
    return await asyncio.to_thread(egress.set_policy, instance_id, body.policy)  # runs nft


@router.get(
    "/{id}/egress/flows",
    response_model=list[Flow],
    summary="An instance's egress flow log, oldest first (Ember extension)",
)
async def egress_flows(
    ref: InstanceRef,
    svc: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=10000, description="The last this many")] = 100,
) -> list[Flow]:
    return _egress(svc).flows(svc.instances.get(ref).id, limit)
