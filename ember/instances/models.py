"""The stored instance record."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ember.guest.config import GuestConfig
from ember.hypervisor import HypervisorName
from ember.images.models import utcnow
from ember.instances.state import State
from ember.snapshots.compression import CompressionConfig
from ember.snapshots.models import SavedVM
from ember.store import StoredRecord


class SnapshotPolicy(BaseModel):
    """Hypeman's `snapshot_policy`: how this instance's snapshots are compressed."""

    model_config = ConfigDict(extra="forbid")

    compression: CompressionConfig | None = None
    standby_compression_delay: str | None = None  # Go duration


RestartMode = Literal["never", "always", "on_failure"]
BlockedReason = Literal["manual_stop", "max_attempts_exceeded"]
RestartReason = Literal["health_check_failed"]


class RestartPolicy(BaseModel):
    """Hypeman's `restart_policy`, defaults filled in (durations kept as Go strings)."""

    policy: RestartMode = "never"
    backoff: str = "5s"
    max_attempts: int = 0  # 0: unlimited
    stable_after: str | None = None


class RestartStatus(BaseModel):
    """What the supervisor decided so far (`supervisor.py`); kept in the record so a
    restarted server goes on supervising."""

    attempts: int = 0
    blocked_reason: BlockedReason | None = None
    last_attempt_at: datetime | None = None
    last_reason: RestartReason | None = None
    next_attempt_at: datetime | None = None
    # Internal (not in the answer): the boot (its started_at) whose end was decided, and
    # the boot a failing health check brought down.
    decided_boot: datetime | None = None
    health_failed_boot: datetime | None = None


class HealthCheckHTTP(BaseModel):
    port: int
    path: str = "/"
    expected_status: int | None = None  # None: any 2xx or 3xx
    scheme: Literal["http", "https"] = "http"


class HealthCheckTCP(BaseModel):
    port: int


class HealthCheckExec(BaseModel):
    command: list[str]
    working_dir: str | None = None


class HealthCheck(BaseModel):
    """Hypeman's `health_check`, validated and with defaults filled in (`policies.py`)."""

    type: Literal["http", "tcp", "exec"]
    http: HealthCheckHTTP | None = None
    tcp: HealthCheckTCP | None = None
    exec: HealthCheckExec | None = None
    interval: str = "10s"
    timeout: str = "5s"
    start_period: str = "0s"
    failure_threshold: int = 3
    success_threshold: int = 1


class AutoStandbyPolicy(BaseModel):
    """Hypeman's `auto_standby`, validated (`policies.auto_standby`)."""

    enabled: bool = False
    idle_timeout: str | None = None  # Go duration; required when enabled
    ignore_source_cidrs: list[str] = Field(default_factory=list)
    ignore_destination_ports: list[int] = Field(default_factory=list)


class Autokill(BaseModel):
    """Unikraft Cloud's instance `autokill`: deleted `time_ms` after it stopped (Stopped,
    or Standby: a VM no longer running), by the reaper (`expiry.py`)."""

    time_ms: int


class AutoStandbyState(BaseModel):
    """What the auto-standby controller observed (`autostandby.py`); kept in the record so
    a restarted server goes on with the countdown."""

    idle_since: datetime | None = None
    last_inbound_activity_at: datetime | None = None
    hold_until: datetime | None = None


class BootPhases(BaseModel):
    """Where the current (or last) boot is and spent its time (`phases.py`)."""

    current: str
    since: datetime
    durations_ms: dict[str, int] = Field(default_factory=dict)
    boot_started: datetime | None = None


class InstanceRecord(StoredRecord):
    image: str  # normalized image reference
    image_digest: str
    state: State = State.CREATED
    state_error: str | None = None
    hypervisor: HypervisorName = "qemu"
    vcpus: int = 1
    memory_bytes: int
    overlay_bytes: int
    hotplug_bytes: int = 0
    disk_io_bps: int | None = None
    # What the user asked for; None means "the image's".
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    skip_guest_agent: bool = False
    # The image's own config (entrypoint, cmd, env, working dir, user) at create, so the
    # instance keeps it when the tag moves (None: made before this was kept).
    image_config: GuestConfig | None = None
    platform: str | None = None  # the image's, e.g. "linux/amd64"
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    exit_code: int | None = None
    exit_message: str | None = None
    # Why it stopped or went to standby: the seed's bitmask (stopreason.py); None while it runs.
    stop_reason: int | None = None
    # The VMM process of the current boot; kept so a restarted server can re-adopt it.
    pid: int | None = None
    # The devices the current (or last) boot's VM got (`Hypervisor.device_set`): a
    # standby keeps them in its saved VM, a restore checks them.
    vm_devices: list[str] | None = None
    # The uid (and gid) its VMM runs as under the jail: its own from create to delete.
    vmm_uid: int | None = None
    # Set while the instance is in Standby: its saved VM, what a restore starts from (the
    # same model as a Standby snapshot's, copied as it is between them).
    standby: SavedVM | None = None
    snapshot_policy: SnapshotPolicy | None = None
    # None: no automatic expiry (`expiry.py` deletes the instance once it is passed).
    expires_at: datetime | None = None
    autokill: Autokill | None = None
    restart_policy: RestartPolicy | None = None
    restart_status: RestartStatus = Field(default_factory=RestartStatus)
    health_check: HealthCheck | None = None
    phases: BootPhases | None = None
    auto_standby: AutoStandbyPolicy | None = None
    auto_standby_state: AutoStandbyState = Field(default_factory=AutoStandbyState)
    # Boots on a memory file without free page reporting, so that VMs made from its saved
    # VM can map that RAM copy-on-write (a template's builder, and every clone of it).
    shareable_memory: bool = False
    # The RAM file (a template's or a snapshot's) this VM maps copy-on-write while it runs
    # (None: its RAM is its own); what keeps that file from being deleted.
    memory_base: str | None = None

    @property
    def stopped_since(self) -> datetime | None:
        """Since when its VM has not run: Stopped (since it stopped) or Standby (since it
        was saved); None in every other state."""
        if self.state == State.STANDBY and self.standby is not None:
            return self.standby.created_at
        if self.state == State.STOPPED:
            return self.stopped_at
        return None
