"""The one typed model of what `POST /instances` asks for.

Types are strict (`vcpus: "2"` or `true` is refused, not coerced) and unknown
fields are refused by name: a typo must never be silently ignored. Values that
need parsing (sizes, rates) stay strings here; `plan.py` turns them into a
plan or refuses them, before anything is created.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ember.egress import CredentialRequest, EgressRequest
from ember.hypervisor import HypervisorName
from ember.instances.models import SnapshotPolicy
from ember.validation import NAME_SCHEMA


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkRequest(_Strict):
    enabled: StrictBool = Field(default=True, description="Attach to the default network")
    bandwidth_download: StrictStr | None = Field(
        default=None, description='Download limit (external -> VM), e.g. "1Gbps", "125MB/s"'
    )
    bandwidth_upload: StrictStr | None = Field(
        default=None, description='Upload limit (VM -> external), e.g. "1Gbps", "125MB/s"'
    )
    egress: EgressRequest | None = Field(
        default=None, description="Mediated egress (`ember/egress`): proxy, credentials, policy"
    )


class VolumeMountRequest(_Strict):
    volume_id: StrictStr = Field(description="Volume id or name")
    mount_path: StrictStr = Field(description="Absolute path in the guest")
    readonly: StrictBool = False
    overlay: StrictBool = Field(
        default=False, description="A private writable layer over a read-only volume"
    )
    overlay_size: StrictStr | None = Field(default=None, description="Required with overlay")


class RestartPolicyRequest(_Strict):
    """Hypeman's `restart_policy`."""

    policy: Literal["never", "always", "on_failure"] = "never"
    backoff: StrictStr | None = Field(default=None, description='Delay before each restart, "5s"')
    max_attempts: StrictInt | None = Field(default=None, description="0: unlimited")
    stable_after: StrictStr | None = Field(
        default=None, description="Running this long resets the attempt count"
    )


class HealthCheckHTTPRequest(_Strict):
    port: StrictInt
    path: StrictStr | None = None
    expected_status: StrictInt | None = None
    scheme: Literal["http", "https"] | None = None


class HealthCheckTCPRequest(_Strict):
    port: StrictInt


class HealthCheckExecRequest(_Strict):
    command: list[StrictStr]
    working_dir: StrictStr | None = None


class HealthCheckRequest(_Strict):
    """Hypeman's `health_check`; `type: none` (or no health_check) disables it."""

    type: Literal["none", "http", "tcp", "exec"] | None = None
    http: HealthCheckHTTPRequest | None = None
    tcp: HealthCheckTCPRequest | None = None
    exec: HealthCheckExecRequest | None = None
    interval: StrictStr | None = None
    timeout: StrictStr | None = None
    start_period: StrictStr | None = None
    failure_threshold: StrictInt | None = None
    success_threshold: StrictInt | None = None


class AutoStandbyPolicyRequest(_Strict):
    """Hypeman's `auto_standby`: standby after `idle_timeout` without inbound TCP flows."""

    enabled: StrictBool = False
    idle_timeout: StrictStr | None = Field(default=None, description='Go duration, e.g. "5m"')
    ignore_destination_ports: list[StrictInt] | None = None
    ignore_source_cidrs: list[StrictStr] | None = None


class AutokillRequest(_Strict):
    """Unikraft Cloud's instance `autokill` (an Ember extension here)."""

    time_ms: StrictInt = Field(
        default=0, description="Delete the instance this long after it stopped (Stopped or "
        "Standby); 0: never",
    )  # fmt: skip
    num_requests: StrictInt = Field(
        default=0, description="Delete it after this many requests; not supported: only 0"
    )


class CreateInstanceRequest(_Strict):
    name: StrictStr = Field(
        description="Lowercase letters, digits and dashes; at most 63",
        json_schema_extra=NAME_SCHEMA,
    )
    image: StrictStr = Field(min_length=1, description="OCI image reference (must be pulled)")
    size: StrictStr = Field(default="1GB", description='Memory, e.g. "1GB", "512MB"')
    hotplug_size: StrictStr | None = None
    overlay_size: StrictStr = Field(default="10GB", description="Writable overlay disk size")
    disk_io_bps: StrictStr | None = Field(default=None, description='e.g. "100MB/s"')
    vcpus: StrictInt = Field(default=2, description="Virtual CPUs")
    env: dict[StrictStr, StrictStr] | None = None
    entrypoint: list[StrictStr] | None = None
    cmd: list[StrictStr] | None = None
    tags: dict[StrictStr, StrictStr] | None = None
    credentials: dict[StrictStr, CredentialRequest] | None = Field(
        default=None,
        description="Keyed by the guest's env var (which gets a placeholder); the real value "
        "stays on the host and is set as a header on matching requests by the egress proxy",
    )
    hypervisor: HypervisorName | None = None
    network: NetworkRequest | None = None
    volumes: list[VolumeMountRequest] | None = None
    skip_guest_agent: StrictBool = False
    platform: StrictStr | None = Field(default=None, description="Must match the image's")
    skip_kernel_headers: StrictBool | None = None  # nothing to install: the kernel is Ember's
    # Hypeman's shapes for features this server does not provide (yet): refused by name.
    devices: list[StrictStr] | None = None
    gpu: dict[str, Any] | None = None
    ttl: StrictStr | None = None
    expires_at: datetime | None = None
    autokill: AutokillRequest | None = Field(
        default=None, description="Ember extension: delete it once stopped for a while"
    )
    restart_policy: RestartPolicyRequest | None = None
    health_check: HealthCheckRequest | None = None
    auto_standby: AutoStandbyPolicyRequest | None = None
    snapshot_policy: SnapshotPolicy | None = None


class StartInstanceRequest(_Strict):
    cmd: list[StrictStr] | None = Field(default=None, description="Replaces the CMD from now on")
    entrypoint: list[StrictStr] | None = Field(default=None, description="Replaces the entrypoint")


class UpdateInstanceRequest(_Strict):
    """`PATCH /instances/{id}`: Hypeman's `InstanceUpdateParams`; each field given takes
    effect on the live instance, fields left out are unchanged."""

    ttl: StrictStr | None = Field(default=None, description='From now; "0s" disables expiry')
    expires_at: datetime | None = None
    autokill: AutokillRequest | None = Field(
        default=None, description="Ember extension: replace (null: switch off) the autokill"
    )
    health_check: HealthCheckRequest | None = None
    restart_policy: RestartPolicyRequest | None = None
    auto_standby: AutoStandbyPolicyRequest | None = None
    tags: dict[StrictStr, StrictStr] | None = None
    env: dict[StrictStr, StrictStr] | None = None
