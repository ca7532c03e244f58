"""`/instances`: create, inspect and drive the lifecycle of VMs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.query import tag_filter
from ember.api.schemas.instances import (
    GROUP_FIELDS,
    AttachVolumeRequest,
    AutoStandbyStatus,
    CreateInstanceBody,
    Instance,
    StandbyRequest,
    UpdateInstanceBody,
    WaitResponse,
)
from ember.api.services import Services
from ember.instances import InstanceRecord, StartInstanceRequest, State
from ember.instances.logs import LogSource
from ember.instances.request import UpdateInstanceRequest
from ember.units import parse_duration

# Every route resolves an instance reference (404) and validates its input (400).
router = APIRouter(prefix="/instances", tags=["instances"], responses=error_responses(400, 404))
# What commands that change an instance may answer beyond that: a state that does not allow
# it or a name taken (409), a host that cannot take it now (429), a VMM that failed (503).
LIFECYCLE_ERRORS = error_responses(409, 429, 503)
InstanceRef = Annotated[str, Path(alias="id", description="Instance id, name or unique id prefix")]


def answer(svc: Services, record: InstanceRecord) -> Instance:
    instances = svc.instances
    return Instance.of(
        record, instances.lease(record), instances.attachments(record),
        instances.health_status(record), svc.groups.membership(record.id),
        svc.schedules.of(record.id),
    )  # fmt: skip


MAX_WAIT_SECONDS = 300.0


@router.post(
    "",
    status_code=201,
    response_model=Instance,
    summary="Create and start an instance",
    responses=LIFECYCLE_ERRORS,
)
async def create_instance(body: CreateInstanceBody, svc: ServicesDep) -> Instance:
    """An image whose pull is under way is waited for (`EMBER_IMAGE_READY_WAIT_SECONDS`),
    then answered as 400 `image_not_ready` if it is still not ready."""
    if body.template is not None:
        return answer(svc, await svc.templates.clone(body.template, body.clone_name()))
    request = body.instance_request()
    schedules = await svc.schedules.check(body.schedules or [])  # before anything exists
    await svc.images.wait_ready(request.image, svc.settings.image_ready_wait_seconds)
    if body.service_group is None and body.scale_to_zero is None:
        record = await svc.instances.create(request)
    else:
        record = await svc.groups.create_instance(request, body.service_group, body.scale_to_zero)
    svc.schedules.put(record.id, schedules)
    return answer(svc, record)


@router.get("", response_model=list[Instance], summary="List instances")
async def list_instances(
    request: Request, svc: ServicesDep, state: State | None = None
) -> list[Instance]:
    records = svc.instances.find(state=state, tags=tag_filter(request))
    return [answer(svc, record) for record in records]


@router.get("/{id}", response_model=Instance, summary="Get an instance")
async def get_instance(ref: InstanceRef, svc: ServicesDep) -> Instance:
    return answer(svc, svc.instances.get(ref))


@router.patch("/{id}", response_model=Instance, summary="Update an instance's policies")
async def update_instance(
    ref: InstanceRef, svc: ServicesDep, body: UpdateInstanceBody | None = None
) -> Instance:
    """Expiry (`ttl` / `expires_at`), `restart_policy`, `health_check`, `auto_standby` and
    `tags`, each taking effect on the live instance; `env` rotates the real values of the
    instance's credentials (only keys named by a credential's `source.env`), also live. Ember's
    `service_group`, `scale_to_zero` and `schedules` change too; every field is checked
    before any is applied."""
    body, egress = body or UpdateInstanceBody(), svc.egress
    given = body.model_fields_set & GROUP_FIELDS
    # Checked first: a refused field must not leave the other fields applied.
    change = svc.groups.check_update(ref, given, body.service_group, body.scale_to_zero)
    schedules = await svc.schedules.check(body.schedules or [])
    request = body.instance_request()
    rotation = request.env if egress is not None and "env" in request.model_fields_set else None
    if egress is not None and rotation is not None:
        egress.check_rotation(svc.instances.get(ref).id, rotation)
        rest = request.model_dump(exclude={"env"}, exclude_unset=True)
        request = UpdateInstanceRequest.model_validate(rest)
    record = await svc.instances.update(ref, request)
    if egress is not None and rotation is not None:
        await asyncio.to_thread(egress.rotate, record.id, rotation)  # runs nft
    if given:
        await svc.groups.apply_update(change)
    if "schedules" in body.model_fields_set:
        svc.schedules.put(record.id, schedules)
    return answer(svc, svc.instances.get(record.id))


@router.delete(
    "/{id}", status_code=204, summary="Stop and delete an instance", responses=error_responses(409)
)
async def delete_instance(
    ref: InstanceRef,
    svc: ServicesDep,
    graceful_shutdown: Annotated[
        bool, Query(description="Stop the workload gracefully (SIGTERM, then force) first")
    ] = False,
) -> Response:
    await svc.instances.delete(ref, graceful=graceful_shutdown)
    return Response(status_code=204)


@router.post(
    "/{id}/stop",
    response_model=Instance,
    summary="Stop gracefully, then force",
    responses=LIFECYCLE_ERRORS,
)
async def stop_instance(ref: InstanceRef, svc: ServicesDep) -> Instance:
    return answer(svc, await svc.instances.stop(ref))


@router.post(
    "/{id}/start",
    response_model=Instance,
    summary="Start a stopped instance",
    responses=LIFECYCLE_ERRORS,
)
async def start_instance(
    ref: InstanceRef, svc: ServicesDep, body: StartInstanceRequest | None = None
) -> Instance:
    body = body or StartInstanceRequest()
    return answer(svc, await svc.instances.start(ref, cmd=body.cmd, entrypoint=body.entrypoint))


@router.post(
    "/{id}/standby",
    response_model=Instance,
    summary="Put in standby (pause, save memory and device state, stop the VMM)",
    responses=LIFECYCLE_ERRORS,
)
async def standby_instance(
    ref: InstanceRef, svc: ServicesDep, body: StandbyRequest | None = None
) -> Instance:
    body = body or StandbyRequest()
    record = await svc.instances.standby(
        ref, compression=body.compression, compression_delay=body.compression_delay
    )
    return answer(svc, record)


@router.post(
    "/{id}/restore",
    response_model=Instance,
    summary="Restore from standby (resume the VM)",
    responses=LIFECYCLE_ERRORS,
)
async def restore_instance(ref: InstanceRef, svc: ServicesDep) -> Instance:
    return answer(svc, await svc.instances.restore(ref))


@router.get("/{id}/wait", response_model=WaitResponse, summary="Wait for a state")
async def wait_instance(
    ref: InstanceRef,
    svc: ServicesDep,
    state: State,
    timeout: Annotated[str, Query(description='Go duration, e.g. "30s", "2m"; max 5m')] = "60s",
) -> WaitResponse:
    record, timed_out = await svc.instances.wait(
        ref, state, min(parse_duration(timeout, field="timeout"), MAX_WAIT_SECONDS)
    )
    return WaitResponse(state=record.state, timed_out=timed_out, state_error=record.state_error)


@router.get(
    "/{id}/logs",
    summary="Stream logs as Server-Sent Events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def instance_logs(
    ref: InstanceRef,
    svc: ServicesDep,
    source: LogSource = LogSource.APP,
    tail: Annotated[int, Query(ge=0, le=100_000)] = 100,
    follow: bool = False,
) -> StreamingResponse:
    lines = svc.instances.logs(ref, source, tail=tail, follow=follow)

    async def events() -> AsyncIterator[bytes]:
        async for line in lines:
            yield f"data: {json.dumps(line)}\n\n".encode()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/{id}/volumes/{volume_id}",
    response_model=Instance,
    summary="Attach a volume to a stopped or running instance",
    responses=error_responses(409, 503),
)
async def attach_volume(
    ref: InstanceRef, volume_id: str, body: AttachVolumeRequest, svc: ServicesDep
) -> Instance:
    record = await svc.instances.attach_volume(
        ref, volume_id, body.mount_path, readonly=body.readonly
    )
    return answer(svc, record)


@router.delete(
    "/{id}/volumes/{volume_id}",
    response_model=Instance,
    summary="Detach a volume from a stopped or running instance",
    responses=error_responses(409, 503),
)
async def detach_volume(ref: InstanceRef, volume_id: str, svc: ServicesDep) -> Instance:
    return answer(svc, await svc.instances.detach_volume(ref, volume_id))


@router.get(
    "/{id}/auto-standby/status",
    response_model=AutoStandbyStatus,
    summary="Auto-standby status: whether and when the instance goes to standby, and why",
)
async def auto_standby_status(ref: InstanceRef, svc: ServicesDep) -> AutoStandbyStatus:
    return AutoStandbyStatus.of(await svc.instances.auto_standby_status(ref))


@router.post(
    "/{id}/auto-standby/hold",
    response_model=AutoStandbyStatus,
    summary="Hold off auto-standby for one idle_timeout from now",
    responses=error_responses(409),
)
async def auto_standby_hold(ref: InstanceRef, svc: ServicesDep) -> AutoStandbyStatus:
    """Each hold replaces the last; 409 when the instance is in (or entering) standby.
    Without an enabled policy, nothing is held and the status is answered."""
    return AutoStandbyStatus.of(await svc.instances.auto_standby_hold(ref))
