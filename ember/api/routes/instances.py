"""`/instances`: create, inspect and drive the lifecycle of VMs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
)

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.query import tag_filter
from ember.api.services import Services
from ember.groups import (
    InstanceServiceGroupRequest,
    MemberRecord,
    ScaleToZero,
    ScaleToZeroRequest,
    ServiceGroupRecord,
)
from ember.hypervisor import HypervisorName
from ember.instances import (
    CreateInstanceRequest,
    InstanceRecord,
    StartInstanceRequest,
    State,
    autostandby,
    health,
    phases,
)
from ember.instances.logs import LogSource
from ember.instances.models import AutoStandbyPolicy, HealthCheck, RestartPolicy, SnapshotPolicy
from ember.instances.request import UpdateInstanceRequest
from ember.network import Lease
from ember.snapshots.compression import CompressionConfig
from ember.units import format_size, parse_duration
from ember.volumes import Attachment

# Every route resolves an instance reference (404) and validates its input (400).
router = APIRouter(prefix="/instances", tags=["instances"], responses=error_responses(400, 404))
# What commands that change an instance may answer beyond that: a state that does not allow
# it or a name taken (409), a host that cannot take it now (429), a VMM that failed (503).
LIFECYCLE_ERRORS = error_responses(409, 429, 503)
InstanceRef = Annotated[str, Path(alias="id", description="Instance id, name or unique id prefix")]
StateName = Literal[
    "Created", "Initializing", "Running", "Paused", "Shutdown", "Stopped", "Standby", "Unknown"
]


def _unset(value: object) -> bool:
    return value is None


# A field the spec types as a plain string (not nullable): left out of an answer when unset,
# never sent as null. Per field, so the OpenAPI document still describes every field.
OptionalString = Annotated[str | None, Field(exclude_if=_unset)]


class InstanceNetwork(BaseModel):
    enabled: bool = False
    name: OptionalString = None
    ip: str | None = None
    mac: str | None = None
    bandwidth_download: OptionalString = None
    bandwidth_upload: OptionalString = None

    @classmethod
    def of(cls, lease: Lease | None) -> InstanceNetwork:
        if lease is None:
            return cls(enabled=False)
        return cls(
            enabled=True,
            name="default",
            ip=lease.ip,
            mac=lease.mac,
            bandwidth_download=_rate(lease.download_rate),
            bandwidth_upload=_rate(lease.upload_rate),
        )


class VolumeMount(BaseModel):
    volume_id: str
    mount_path: str
    readonly: bool = False
    overlay: bool = False
    overlay_size: str | None = None

    @classmethod
    def of(cls, attachment: Attachment) -> VolumeMount:
        size = attachment.overlay_size_bytes
        return cls(
            volume_id=attachment.volume_id,
            mount_path=attachment.mount_path,
            readonly=attachment.readonly,
            overlay=attachment.overlay,
            overlay_size=format_size(size) if size else None,
        )


class AttachVolumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mount_path: StrictStr = Field(description="Absolute path in the guest")
    readonly: StrictBool = False


def _rate(bytes_per_second: int | None) -> str | None:
    return f"{format_size(bytes_per_second)}/s" if bytes_per_second else None


class RestartStatus(BaseModel):
    """Hypeman's `RestartStatus` (the record keeps a little more, for the supervisor)."""

    attempts: int = 0
    blocked_reason: Literal["manual_stop", "max_attempts_exceeded"] | None = None
    last_attempt_at: datetime | None = None
    last_reason: Literal["health_check_failed"] | None = None
    next_attempt_at: datetime | None = None

    @classmethod
    def of(cls, record: InstanceRecord) -> RestartStatus:
        fields = set(cls.model_fields)
        return cls.model_validate(record.restart_status.model_dump(include=fields))


class Instance(BaseModel):
    id: str
    name: str
    image: str
    state: StateName
    created_at: datetime
    state_error: str | None = None
    size: OptionalString = None
    hotplug_size: OptionalString = None
    overlay_size: OptionalString = None
    disk_io_bps: OptionalString = None
    vcpus: int | None = None
    env: dict[str, str] | None = None
    tags: dict[str, str] | None = None
    hypervisor: HypervisorName | None = None
    network: InstanceNetwork | None = None
    volumes: list[VolumeMount] = []
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    exit_code: int | None = None
    exit_message: OptionalString = None
    stop_reason: int | None = Field(
        default=None,
        description="Ember extension: why it stopped, Unikraft Cloud's bitmask (16 forced, "
        "8 user, 4 platform, 2 app, 1 kernel; e.g. 15 a user stop, 7 scaled to zero, 3 the "
        "program exited); null while it runs",
    )
    has_snapshot: bool = False
    platform: str | None = None
    expires_at: datetime | None = None  # null: no automatic expiry
    restart_policy: RestartPolicy | None = None
    restart_status: RestartStatus | None = None
    health_check: HealthCheck | None = None
    health_status: health.HealthStatus | None = None
    current_phase: str | None = None
    current_phase_since: datetime | None = None
    phase_durations_ms: dict[str, int] | None = None
    auto_standby: AutoStandbyPolicy | None = None
    snapshot_policy: SnapshotPolicy | None = None
    service_group: InstanceServiceGroup | None = Field(
        default=None, description="Ember extension: the service group it serves in"
    )
    scale_to_zero: ScaleToZero | None = Field(
        default=None, description="Ember extension: when it sleeps (needs a service group)"
    )

    @classmethod
    def of(
        cls,
        record: InstanceRecord,
        lease: Lease | None = None,
        attachments: list[Attachment] | None = None,
        health: health.HealthStatus | None = None,
        group: tuple[ServiceGroupRecord, MemberRecord] | None = None,
    ) -> Instance:
        phase, phase_since, durations = phases.describe(record)
        return cls(
            **record.model_dump(
                include={
                    "id",
                    "name",
                    "image",
                    "state",
                    "created_at",
                    "state_error",
                    "vcpus",
                    "env",
                    "tags",
                    "hypervisor",
                    "started_at",
                    "stopped_at",
                    "exit_code",
                    "exit_message",
                    "stop_reason",
                    "platform",
                    "auto_standby",
                    "snapshot_policy",
                    "expires_at",
                    "restart_policy",
                    "health_check",
                },
            ),
            restart_status=RestartStatus.of(record) if record.restart_policy else None,
            health_status=health,
            current_phase=phase,
            current_phase_since=phase_since,
            phase_durations_ms=durations,
            size=format_size(record.memory_bytes),
            hotplug_size=format_size(record.hotplug_bytes) if record.hotplug_bytes else None,
            overlay_size=format_size(record.overlay_bytes),
            disk_io_bps=_rate(record.disk_io_bps),
            network=InstanceNetwork.of(lease),
            volumes=[VolumeMount.of(a) for a in attachments or []],
            has_snapshot=record.standby is not None,
            service_group=InstanceServiceGroup(id=group[0].id, name=group[0].name)
            if group
            else None,
            scale_to_zero=group[1].scale_to_zero if group else None,
        )


class InstanceServiceGroup(BaseModel):
    id: str
    name: str


def answer(svc: Services, record: InstanceRecord) -> Instance:
    instances = svc.instances
    return Instance.of(
        record, instances.lease(record), instances.attachments(record),
        instances.health_status(record), svc.groups.membership(record.id),
    )  # fmt: skip


class CreateInstanceBody(CreateInstanceRequest):
    """Hypeman's create request, plus Ember's service groups (extension)."""

    service_group: InstanceServiceGroupRequest | None = Field(
        default=None,
        description="Ember extension: join an existing service group (`name` or `uuid`), "
        "or make an ephemeral one (`services`, `domains`, limits)",
    )
    scale_to_zero: ScaleToZeroRequest | None = Field(
        default=None, description="Ember extension: sleep when idle (needs service_group)"
    )

    def instance_request(self) -> CreateInstanceRequest:
        return CreateInstanceRequest.model_validate(
            self.model_dump(exclude=GROUP_FIELDS, exclude_unset=True)
        )


class UpdateInstanceBody(UpdateInstanceRequest):
    """Hypeman's update request, plus Ember's service groups (extension)."""

    service_group: InstanceServiceGroupRequest | None = Field(
        default=None, description="Ember extension: move to this group (null: leave it)"
    )
    scale_to_zero: ScaleToZeroRequest | None = Field(
        default=None, description="Ember extension: change or (null) switch off"
    )

    def instance_request(self) -> UpdateInstanceRequest:
        return UpdateInstanceRequest.model_validate(
            self.model_dump(exclude=GROUP_FIELDS, exclude_unset=True)
        )


GROUP_FIELDS = {"service_group", "scale_to_zero"}


class WaitResponse(BaseModel):
    state: StateName
    timed_out: bool
    state_error: str | None = None


MAX_WAIT_SECONDS = 300.0


@router.post(
    "",
    status_code=201,
    response_model=Instance,
    summary="Create and start an instance",
    responses=LIFECYCLE_ERRORS,
)
async def create_instance(body: CreateInstanceBody, svc: ServicesDep) -> Instance:
    request = body.instance_request()
    if body.service_group is None and body.scale_to_zero is None:
        return answer(svc, await svc.instances.create(request))
    record = await svc.groups.create_instance(request, body.service_group, body.scale_to_zero)
    return answer(svc, record)


@router.get("", response_model=list[Instance], summary="List instances")
async def list_instances(
    request: Request, svc: ServicesDep, state: StateName | None = None
) -> list[Instance]:
    records = svc.instances.find(state=State(state) if state else None, tags=tag_filter(request))
    return [answer(svc, record) for record in records]


@router.get("/{id}", response_model=Instance, summary="Get an instance")
async def get_instance(ref: InstanceRef, svc: ServicesDep) -> Instance:
    return answer(svc, svc.instances.get(ref))


@router.patch("/{id}", response_model=Instance, summary="Update an instance's policies")
async def update_instance(
    ref: InstanceRef, svc: ServicesDep, body: UpdateInstanceBody | None = None
) -> Instance:
    """Expiry (`ttl` / `expires_at`), `restart_policy`, `health_check` and `tags`, each
    taking effect on the live instance; `auto_standby` and credential `env` are refused by
    name (not available on this server)."""
    body = body or UpdateInstanceBody()
    given = body.model_fields_set & GROUP_FIELDS
    # Checked first: a refused group field must not leave the other fields applied.
    change = svc.groups.check_update(ref, given, body.service_group, body.scale_to_zero)
    record = await svc.instances.update(ref, body.instance_request())
    if given:
        await svc.groups.apply_update(change)
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


class StandbyRequest(BaseModel):
    """Hypeman's `InstanceStandbyParams`."""

    model_config = ConfigDict(extra="forbid")

    compression: CompressionConfig | None = None
    compression_delay: str | None = None  # Go duration, e.g. "30s"


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
    state: StateName,
    timeout: Annotated[str, Query(description='Go duration, e.g. "30s", "2m"; max 5m')] = "60s",
) -> WaitResponse:
    record, timed_out = await svc.instances.wait(
        ref, State(state), min(parse_duration(timeout, field="timeout"), MAX_WAIT_SECONDS)
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
    summary="Attach a volume to a stopped instance",
    responses=error_responses(409),
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
    summary="Detach a volume from a stopped instance",
    responses=error_responses(409),
)
async def detach_volume(ref: InstanceRef, volume_id: str, svc: ServicesDep) -> Instance:
    return answer(svc, await svc.instances.detach_volume(ref, volume_id))


class AutoStandbyStatus(BaseModel):
    """Hypeman's `AutoStandbyStatus` (`ember/instances/autostandby.py`)."""

    status: autostandby.Status
    reason: autostandby.Reason
    supported: bool
    configured: bool
    enabled: bool
    eligible: bool
    active_inbound_connections: int
    tracking_mode: str
    idle_timeout: OptionalString = None
    idle_since: datetime | None = None
    last_inbound_activity_at: datetime | None = None
    hold_until: datetime | None = None
    next_standby_at: datetime | None = None
    countdown_remaining: OptionalString = None

    @classmethod
    def of(cls, report: autostandby.Report) -> AutoStandbyStatus:
        return cls(**dataclasses.asdict(report))


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
