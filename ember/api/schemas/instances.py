"""The instance answer and its parts, built from the domain types field by field."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from ember.api.schemas.base import Omitted
from ember.api.schemas.snapshots import CompressionConfig
from ember.errors import InvalidArgument
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
    State,
    autostandby,
    health,
    models,
    phases,
)
from ember.instances.request import UpdateInstanceRequest
from ember.network import Lease
from ember.schedules import Schedule, ScheduleAction, ScheduleRequest
from ember.snapshots.compression import CompressionConfig as Compression
from ember.units import format_size
from ember.volumes import Attachment


class InstanceNetwork(BaseModel):
    enabled: bool = False
    name: Omitted[str] = None
    ip: str | None = None
    mac: str | None = None
    bandwidth_download: Omitted[str] = None
    bandwidth_upload: Omitted[str] = None

    @classmethod
    def of(cls, lease: Lease | None) -> InstanceNetwork:
        if lease is None:
            return cls(enabled=False)
        return cls(
            enabled=True,
            name="default",
            ip=lease.ip,
            mac=lease.mac,
            bandwidth_download=rate(lease.download_rate),
            bandwidth_upload=rate(lease.upload_rate),
        )


class VolumeMount(BaseModel):
    volume_id: str
    mount_path: str
    readonly: bool = False
    overlay: bool = False
    overlay_size: Omitted[str] = None

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


def rate(bytes_per_second: int | None) -> str | None:
    return f"{format_size(bytes_per_second)}/s" if bytes_per_second else None


class RestartPolicy(BaseModel):
    policy: models.RestartMode
    backoff: str
    max_attempts: int
    stable_after: Omitted[str] = None

    @classmethod
    def of(cls, p: models.RestartPolicy) -> RestartPolicy:
        return cls(
            policy=p.policy,
            backoff=p.backoff,
            max_attempts=p.max_attempts,
            stable_after=p.stable_after,
        )


class RestartStatus(BaseModel):
    attempts: int = 0
    # Nullable in the spec, but with an enum that lacks null (OAS 3.0.3: null is then
    # invalid): left out when unset.
    blocked_reason: Omitted[models.BlockedReason] = None
    last_attempt_at: datetime | None = None
    last_reason: Omitted[models.RestartReason] = None
    next_attempt_at: datetime | None = None

    @classmethod
    def of(cls, s: models.RestartStatus) -> RestartStatus:
        return cls(
            attempts=s.attempts,
            blocked_reason=s.blocked_reason,
            last_attempt_at=s.last_attempt_at,
            last_reason=s.last_reason,
            next_attempt_at=s.next_attempt_at,
        )


class HealthCheckHTTP(BaseModel):
    port: int
    path: str
    scheme: Literal["http", "https"]
    expected_status: Omitted[int] = None

    @classmethod
    def of(cls, c: models.HealthCheckHTTP) -> HealthCheckHTTP:
        return cls(port=c.port, path=c.path, scheme=c.scheme, expected_status=c.expected_status)


class HealthCheckTCP(BaseModel):
    port: int

    @classmethod
    def of(cls, c: models.HealthCheckTCP) -> HealthCheckTCP:
        return cls(port=c.port)


class HealthCheckExec(BaseModel):
    command: list[str]
    working_dir: Omitted[str] = None

    @classmethod
    def of(cls, c: models.HealthCheckExec) -> HealthCheckExec:
        return cls(command=c.command, working_dir=c.working_dir)


class HealthCheck(BaseModel):
    type: Literal["http", "tcp", "exec"]
    http: Omitted[HealthCheckHTTP] = None
    tcp: Omitted[HealthCheckTCP] = None
    exec: Omitted[HealthCheckExec] = None
    interval: str
    timeout: str
    start_period: str
    failure_threshold: int
    success_threshold: int

    @classmethod
    def of(cls, c: models.HealthCheck) -> HealthCheck:
        return cls(
            type=c.type,
            http=HealthCheckHTTP.of(c.http) if c.http else None,
            tcp=HealthCheckTCP.of(c.tcp) if c.tcp else None,
            exec=HealthCheckExec.of(c.exec) if c.exec else None,
            interval=c.interval,
            timeout=c.timeout,
            start_period=c.start_period,
            failure_threshold=c.failure_threshold,
            success_threshold=c.success_threshold,
        )


class AutoStandbyPolicy(BaseModel):
    enabled: bool
    idle_timeout: Omitted[str] = None
    ignore_source_cidrs: list[str]
    ignore_destination_ports: list[int]

    @classmethod
    def of(cls, p: models.AutoStandbyPolicy) -> AutoStandbyPolicy:
        return cls(
            enabled=p.enabled,
            idle_timeout=p.idle_timeout,
            ignore_source_cidrs=p.ignore_source_cidrs,
            ignore_destination_ports=p.ignore_destination_ports,
        )


class SnapshotPolicy(BaseModel):
    compression: Omitted[CompressionConfig] = None
    standby_compression_delay: Omitted[str] = None

    @classmethod
    def of(cls, p: models.SnapshotPolicy) -> SnapshotPolicy:
        return cls(
            compression=CompressionConfig.of(p.compression) if p.compression else None,
            standby_compression_delay=p.standby_compression_delay,
        )


class Instance(BaseModel):
    id: str
    name: str
    image: str
    state: State
    created_at: datetime
    state_error: str | None = None
    size: Omitted[str] = None
    hotplug_size: Omitted[str] = None
    overlay_size: Omitted[str] = None
    disk_io_bps: Omitted[str] = None
    vcpus: int
    env: dict[str, str]
    tags: dict[str, str]
    hypervisor: HypervisorName
    network: InstanceNetwork
    volumes: list[VolumeMount] = []
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    exit_code: int | None = None
    exit_message: Omitted[str] = None
    has_snapshot: bool = False
    platform: Omitted[str] = None
    expires_at: datetime | None  # null: no automatic expiry (always sent, as the spec asks)
    autokill: Omitted[models.Autokill] = Field(
        default=None, description="Ember extension: deleted `time_ms` after it stopped"
    )
    restart_policy: Omitted[RestartPolicy] = None
    restart_status: Omitted[RestartStatus] = None
    health_check: Omitted[HealthCheck] = None
    health_status: Omitted[health.HealthStatus] = None
    current_phase: Omitted[str] = None
    current_phase_since: Omitted[datetime] = None
    phase_durations_ms: Omitted[dict[str, int]] = None
    auto_standby: Omitted[AutoStandbyPolicy] = None
    snapshot_policy: Omitted[SnapshotPolicy] = None
    stop_reason: Omitted[int] = Field(
        default=None,
        description="Ember extension: why it stopped, Unikraft Cloud's bitmask (16 forced, "
        "8 user, 4 platform, 2 app, 1 kernel; e.g. 15 a user stop, 7 scaled to zero, 3 the "
        "program exited); left out while it runs",
    )
    service_group: Omitted[InstanceServiceGroup] = Field(
        default=None, description="Ember extension: the service group it serves in"
    )
    scale_to_zero: Omitted[ScaleToZero] = Field(
        default=None, description="Ember extension: when it sleeps (needs a service group)"
    )
    schedules: Omitted[list[InstanceSchedule]] = Field(
        default=None, description="Ember extension: calendar schedules (start, stop, standby, "
        "delete, exec), Unikraft Cloud's `schedules`",
    )  # fmt: skip

    @classmethod
    def of(
        cls,
        r: InstanceRecord,
        lease: Lease | None = None,
        attachments: list[Attachment] | None = None,
        health: health.HealthStatus | None = None,
        group: tuple[ServiceGroupRecord, MemberRecord] | None = None,
        schedules: list[Schedule] | None = None,
    ) -> Instance:
        phase, phase_since, durations = phases.describe(r)
        return cls(
            id=r.id,
            name=r.name,
            image=r.image,
            state=r.state,
            created_at=r.created_at,
            state_error=r.state_error,
            size=format_size(r.memory_bytes),
            hotplug_size=format_size(r.hotplug_bytes) if r.hotplug_bytes else None,
            overlay_size=format_size(r.overlay_bytes),
            disk_io_bps=rate(r.disk_io_bps),
            vcpus=r.vcpus,
            env=r.env,
            tags=r.tags,
            hypervisor=r.hypervisor,
            network=InstanceNetwork.of(lease),
            volumes=[VolumeMount.of(a) for a in attachments or []],
            started_at=r.started_at,
            stopped_at=r.stopped_at,
            exit_code=r.exit_code,
            exit_message=r.exit_message,
            has_snapshot=r.standby is not None,
            platform=r.platform,
            expires_at=r.expires_at,
            autokill=r.autokill,
            restart_policy=RestartPolicy.of(r.restart_policy) if r.restart_policy else None,
            restart_status=RestartStatus.of(r.restart_status) if r.restart_policy else None,
            health_check=HealthCheck.of(r.health_check) if r.health_check else None,
            health_status=health,
            current_phase=phase,
            current_phase_since=phase_since,
            phase_durations_ms=durations,
            auto_standby=AutoStandbyPolicy.of(r.auto_standby) if r.auto_standby else None,
            snapshot_policy=SnapshotPolicy.of(r.snapshot_policy) if r.snapshot_policy else None,
            stop_reason=r.stop_reason,
            service_group=InstanceServiceGroup.of(group[0]) if group else None,
            scale_to_zero=group[1].scale_to_zero if group else None,
            schedules=[InstanceSchedule.of(s) for s in schedules] if schedules else None,
        )


class InstanceSchedule(BaseModel):
    name: str
    when: str
    action: ScheduleAction
    args: Omitted[list[str]] = None
    next_at: Omitted[int] = Field(
        default=None, description="Unix seconds of the next run; left out if there is none"
    )
    last_at: Omitted[datetime] = None
    last_result: Omitted[str] = Field(default=None, description='"ok", "exit N", or why not')

    @classmethod
    def of(cls, s: Schedule) -> InstanceSchedule:
        return cls(
            name=s.name,
            when=s.when,
            action=s.action,
            args=s.args or None,
            next_at=int(s.next_at.timestamp()) if s.next_at else None,
            last_at=s.last_at,
            last_result=s.last_result,
        )


class InstanceServiceGroup(BaseModel):
    id: str
    name: str

    @classmethod
    def of(cls, group: ServiceGroupRecord) -> InstanceServiceGroup:
        return cls(id=group.id, name=group.name)


GROUP_FIELDS = {"service_group", "scale_to_zero"}
EXTENSION_FIELDS = GROUP_FIELDS | {"schedules", "template"}


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
    schedules: list[ScheduleRequest] | None = Field(
        default=None, description="Ember extension: calendar schedules (Unikraft Cloud's)"
    )
    image: StrictStr | None = Field(  # type: ignore[assignment]
        default=None, min_length=1,
        description="OCI image reference (must be pulled); required unless `template`",
    )  # fmt: skip
    template: StrictStr | None = Field(
        default=None, min_length=1,
        description="Ember extension: a template (id, name or id prefix) to clone, Running "
        "from its saved state with its own id, name, disks, MAC, IP and hostname; only "
        "`name` may be given with it",
    )  # fmt: skip

    def clone_name(self) -> str:
        """The clone's name, with `template`: nothing else may be asked of a clone."""
        extra = sorted(self.model_fields_set - {"name", "template"})
        if extra:
            raise InvalidArgument(
                f"{', '.join(extra)}: cannot be given with template (a clone runs as its "
                "template was saved)"
            )
        return self.name

    def instance_request(self) -> CreateInstanceRequest:
        if self.image is None:
            raise InvalidArgument("image: required (or template)")
        return CreateInstanceRequest.model_validate(
            self.model_dump(exclude=EXTENSION_FIELDS, exclude_unset=True)
        )


class UpdateInstanceBody(UpdateInstanceRequest):
    """Hypeman's update request, plus Ember's service groups (extension)."""

    service_group: InstanceServiceGroupRequest | None = Field(
        default=None, description="Ember extension: move to this group (null: leave it)"
    )
    scale_to_zero: ScaleToZeroRequest | None = Field(
        default=None, description="Ember extension: change or (null) switch off"
    )
    schedules: list[ScheduleRequest] | None = Field(
        default=None, description="Ember extension: replace the schedules (null or []: none)"
    )

    def instance_request(self) -> UpdateInstanceRequest:
        return UpdateInstanceRequest.model_validate(
            self.model_dump(exclude=EXTENSION_FIELDS, exclude_unset=True)
        )


class WaitResponse(BaseModel):
    state: State
    timed_out: bool
    state_error: str | None = None


class StandbyRequest(BaseModel):
    """Hypeman's `InstanceStandbyParams`."""

    model_config = ConfigDict(extra="forbid")

    compression: Compression | None = None
    compression_delay: str | None = None  # Go duration, e.g. "30s"


class AutoStandbyStatus(BaseModel):
    """Hypeman's `AutoStandbyStatus`, from the controller's report."""

    status: autostandby.Status
    reason: autostandby.Reason
    supported: bool
    configured: bool
    enabled: bool
    eligible: bool
    active_inbound_connections: int
    tracking_mode: str
    idle_timeout: str | None = None
    idle_since: datetime | None = None
    last_inbound_activity_at: datetime | None = None
    hold_until: datetime | None = None
    next_standby_at: datetime | None = None
    countdown_remaining: str | None = None

    @classmethod
    def of(cls, r: autostandby.Report) -> AutoStandbyStatus:
        return cls(
            status=r.status,
            reason=r.reason,
            supported=r.supported,
            configured=r.configured,
            enabled=r.enabled,
            eligible=r.eligible,
            active_inbound_connections=r.active_inbound_connections,
            tracking_mode=r.tracking_mode,
            idle_timeout=r.idle_timeout,
            idle_since=r.idle_since,
            last_inbound_activity_at=r.last_inbound_activity_at,
            hold_until=r.hold_until,
            next_standby_at=r.next_standby_at,
            countdown_remaining=r.countdown_remaining,
        )
