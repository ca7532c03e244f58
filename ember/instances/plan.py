"""Turn a create request into a plan of the VM, refusing anything invalid first.

`plan_create` is pure: it reads the request, the image record, the host's
limits and the hypervisor map, and returns an immutable `CreatePlan` or raises
InvalidArgument naming the field. Nothing is written, started or inserted
before a plan exists, so a bad request leaves no trace. `guest_config` and
`vm_spec` are pure too: what a boot runs and the VM that runs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ember.egress import EgressPlan, plan_egress
from ember.errors import InvalidArgument
from ember.guest.config import (
    GUEST_CERTS,
    MIN_OVERLAY_BYTES,
    GuestConfig,
    GuestNetwork,
    GuestVolume,
)
from ember.hypervisor import DiskSpec, Hypervisors, JailSpec, NicSpec, VMSpec
from ember.ids import is_id
from ember.images.models import ImageRecord
from ember.instances import policies
from ember.instances.layout import InstanceLayout
from ember.instances.logs import LogSource
from ember.instances.models import InstanceRecord
from ember.instances.request import CreateInstanceRequest, NetworkRequest, VolumeMountRequest
from ember.system import BootArtifacts
from ember.units import format_size, parse_rate, parse_size
from ember.validation import validate_env, validate_name, validate_tags
from ember.volumes.mounts import validate_mount_path

# Below this the guest kernel and initrd do not fit: the VM dies before its init runs.
MIN_MEMORY_BYTES = 128 << 20
# Fields of Hypeman's create request for features this server does not provide.
NOT_PROVIDED = {
    "devices": "device passthrough is not available on this host",
    "gpu": "GPUs are not available on this host",
}


@dataclass(frozen=True, slots=True)
class HostLimits:
    """What one instance may ask of this host."""

    max_vcpus: int  # per instance
    host_cpus: int
    memory_bytes: int  # physical memory: no single instance can have more

    @classmethod
    def detect(cls, max_vcpus: int | None = None) -> HostLimits:
        """The host's cores and memory; instances get at most `max_vcpus` (default: every
        core, since under TCG more vCPUs than cores only slow a guest down)."""
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        cpus = os.cpu_count() or 1
        return cls(max_vcpus=max_vcpus or cpus, host_cpus=cpus, memory_bytes=pages * page_size)


@dataclass(frozen=True, slots=True)
class NetworkPlan:
    download_bps: int | None = None
    upload_bps: int | None = None


@dataclass(frozen=True, slots=True)
class VolumePlan:
    volume: str  # id or name, resolved when attached
    mount_path: str
    readonly: bool
    overlay_bytes: int | None  # a private writable layer of this size


@dataclass(frozen=True, slots=True)
class CreatePlan:
    """Everything a create will do, decided before it does any of it."""

    record: InstanceRecord  # inserted as is (state Created)
    network: NetworkPlan | None
    volumes: tuple[VolumePlan, ...] = ()
    egress: EgressPlan | None = None  # mediated egress; holds credentials' real values


def plan_create(
    request: CreateInstanceRequest,
    *,
    instance_id: str,
    image: ImageRecord,
    hypervisors: Hypervisors,
    limits: HostLimits,
    networking: bool,
) -> CreatePlan:
    """Validate the whole request against the image and host; InvalidArgument on the first
    field that cannot be honoured."""
    for name, reason in NOT_PROVIDED.items():
        if getattr(request, name):
            raise InvalidArgument(f"{name}: {reason}", code="not_supported")
    name = validate_name(request.name)
    if is_id(name):
        raise InvalidArgument(
            f"name: {name!r} has the shape of an instance id; choose a name that does not, "
            "so that lookups by id and by name cannot be confused"
        )
    hypervisor = hypervisors.get(request.hypervisor)
    hotplug = _size(request.hotplug_size, "hotplug_size") if request.hotplug_size else 0
    if hotplug and not hypervisor.capabilities.hotplug_memory:
        raise InvalidArgument(
            f"hotplug_size: memory hotplug is not supported by the {hypervisor.name} "
            "microvm machine type; size the instance with `size` instead"
        )
    memory = _memory(request.size, limits)
    overlay = _size(request.overlay_size, "overlay_size")
    if overlay < MIN_OVERLAY_BYTES:
        raise InvalidArgument(
            f"overlay_size: at least {format_size(MIN_OVERLAY_BYTES)} (the ext4 journal "
            "and metadata need room)"
        )
    if not 1 <= request.vcpus <= limits.max_vcpus:
        raise InvalidArgument(
            f"vcpus: {request.vcpus} is out of range: this host allows 1 to "
            f"{limits.max_vcpus} per instance"
        )
    if request.platform and request.platform != image.platform:
        raise InvalidArgument(
            f"platform: image {image.name!r} is {image.platform}, not {request.platform}; "
            "pull it for that platform first"
        )
    network = _network(request.network, networking)
    egress, env = plan_egress(
        request.network.egress if request.network else None, request.credentials,
        validate_env(request.env), networked=network is not None,
    )  # fmt: skip
    record = InstanceRecord(
        id=instance_id,
        name=name,
        image=image.name,
        image_digest=image.digest,
        platform=image.platform,
        hypervisor=hypervisor.name,
        vcpus=request.vcpus,
        memory_bytes=memory,
        overlay_bytes=overlay,
        hotplug_bytes=hotplug,
        disk_io_bps=(
            parse_rate(request.disk_io_bps, field="disk_io_bps") if request.disk_io_bps else None
        ),
        entrypoint=request.entrypoint,
        cmd=request.cmd,
        env=env,  # credentials' real values are not in it: the guest's placeholders are
        tags=validate_tags(request.tags),
        skip_guest_agent=request.skip_guest_agent,
        # The instance keeps what it was created from, even if the tag moves later.
        image_config=image_config(image),
        expires_at=policies.expiry(request.ttl, request.expires_at, datetime.now(UTC)),
        restart_policy=policies.restart_policy(request.restart_policy),
        snapshot_policy=policies.snapshot_policy(request.snapshot_policy),
        health_check=policies.health_check(request.health_check, networked=network is not None),
        auto_standby=policies.auto_standby(request.auto_standby),
        autokill=policies.autokill(request.autokill),
    )
    # The whole guest config must encode: env, argv and sizes are checked here, not at boot.
    guest_config(record).to_record()
    return CreatePlan(
        record=record,
        network=network,
        volumes=tuple(_volume(i, v) for i, v in enumerate(request.volumes or ())),
        egress=egress,
    )


def _size(value: str, field: str) -> int:
    return parse_size(value, field=field)


def _memory(value: str, limits: HostLimits) -> int:
    memory = _size(value, "size")
    if memory < MIN_MEMORY_BYTES:
        raise InvalidArgument(
            f"size: at least {format_size(MIN_MEMORY_BYTES)} of memory is needed to boot"
        )
    if memory > limits.memory_bytes:
        raise InvalidArgument(
            f"size: {format_size(memory)} is more than this host's "
            f"{format_size(limits.memory_bytes)} of memory"
        )
    return memory


def _network(request: NetworkRequest | None, networking: bool) -> NetworkPlan | None:
    """The instance's network; with networking off on this server, only an explicit
    `enabled: true` is refused (the default, like `enabled: false`, means none)."""
    if not networking:
        if request is not None and "enabled" in request.model_fields_set and request.enabled:
            raise InvalidArgument(
                "network.enabled: networking is turned off on this server (EMBER_NETWORK_ENABLED)"
            )
        request = NetworkRequest(enabled=False)
    request = request or NetworkRequest()
    if not request.enabled:
        if request.bandwidth_download or request.bandwidth_upload:
            raise InvalidArgument("network: bandwidth limits need `enabled: true`")
        return None

    def rate(value: str | None, name: str) -> int | None:
        return parse_rate(value, field=f"network.{name}") if value else None

    return NetworkPlan(
        download_bps=rate(request.bandwidth_download, "bandwidth_download"),
        upload_bps=rate(request.bandwidth_upload, "bandwidth_upload"),
    )


def _volume(index: int, request: VolumeMountRequest) -> VolumePlan:
    where = f"volumes[{index}]"
    if request.overlay and not request.readonly:
        raise InvalidArgument(f"{where}.overlay: needs `readonly: true` (a layer over it)")
    if request.overlay and not request.overlay_size:
        raise InvalidArgument(f"{where}.overlay_size: required with `overlay: true`")
    if request.overlay_size and not request.overlay:
        raise InvalidArgument(f"{where}.overlay_size: only with `overlay: true`")
    overlay = _size(request.overlay_size, f"{where}.overlay_size") if request.overlay_size else None
    if overlay is not None and overlay < MIN_OVERLAY_BYTES:
        raise InvalidArgument(f"{where}.overlay_size: at least {format_size(MIN_OVERLAY_BYTES)}")
    mount_path = validate_mount_path(request.mount_path, field=f"{where}.mount_path")
    return VolumePlan(request.volume_id, mount_path, request.readonly, overlay)


def image_config(image: ImageRecord) -> GuestConfig:
    return GuestConfig(
        entrypoint=image.entrypoint or [],
        cmd=image.cmd or [],
        env=image.env or {},
        working_dir=image.working_dir or "/",
        user=image.user or "",
    )


def guest_config(record: InstanceRecord, devices: BootDevices | None = None) -> GuestConfig:
    """What the guest runs: the request merged over the image config as `docker run` does,
    with the network and volumes of this boot."""
    devices = devices or BootDevices()
    image = record.image_config or GuestConfig()
    entrypoint = record.entrypoint if record.entrypoint is not None else image.entrypoint
    if record.cmd is not None:
        cmd = record.cmd
    elif record.entrypoint is not None:
        cmd = []  # a new entrypoint drops the image's CMD, as in Docker
    else:
        cmd = image.cmd
    if not entrypoint and not cmd:
        raise InvalidArgument(
            f"image {record.image!r} has no entrypoint or cmd: give `cmd` or `entrypoint`"
        )
    trust = trust_env(devices.ca_certificates)
    return image.model_copy(
        update={"entrypoint": entrypoint, "cmd": cmd, "env": {**trust, **image.env, **record.env},
                "hostname": record.name, "network": devices.network,
                "volumes": list(devices.volumes), "ca_certificates": devices.ca_certificates}
    )  # fmt: skip


def trust_env(ca_certificates: str | None) -> dict[str, str]:
    """Where TLS clients find the bundle init appended the egress CA to (the image's and
    the request's env win, as they would over any default)."""
    if not ca_certificates:
        return {}
    bundle = f"{GUEST_CERTS}/ca-certificates.crt"
    return {"SSL_CERT_FILE": bundle, "CURL_CA_BUNDLE": bundle, "REQUESTS_CA_BUNDLE": bundle,
            "NODE_EXTRA_CA_CERTS": f"{GUEST_CERTS}/ember-egress-ca.pem"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class BootDevices:
    """What the resources an instance holds add to one boot of its VM."""

    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    network: GuestNetwork | None = None
    volumes: tuple[GuestVolume, ...] = ()
    ca_certificates: str | None = None  # PEM for the guest's trust store (egress CA)
    jail: JailSpec | None = None  # the VMM's confinement (ember/instances/jail.py)

    def merge(self, other: BootDevices) -> BootDevices:
        return BootDevices(
            disks=self.disks + other.disks,
            nics=self.nics + other.nics,
            network=other.network or self.network,
            volumes=self.volumes + other.volumes,
            ca_certificates=other.ca_certificates or self.ca_certificates,
            jail=other.jail or self.jail,
        )


def vm_spec(
    record: InstanceRecord,
    layout: InstanceLayout,
    system: BootArtifacts,
    rootfs: Path,
    devices: BootDevices,
    *,
    memory_in_file: bool,
    memory_base: Path | None = None,
) -> VMSpec:
    """The VM one boot of `record` runs (pure: no file is touched). `memory_base`: a
    template's RAM file it maps copy-on-write instead of its own."""
    limit = record.disk_io_bps
    disks = [
        DiskSpec(rootfs, "ember-root", readonly=True, bps_limit=limit),
        DiskSpec(layout.overlay, "ember-overlay", bps_limit=limit),
        DiskSpec(layout.config, "ember-config"),
        *devices.disks,
    ]
    return VMSpec(
        instance_dir=layout.dir,
        kernel=system.kernel,
        initrd=system.initrd,
        cmdline=system.cmdline,
        vcpus=record.vcpus,
        memory_bytes=record.memory_bytes,
        app_log=layout.log(LogSource.APP),
        agent_socket=layout.agent,
        qmp_socket=layout.qmp,
        pid_file=layout.pid_file,
        disks=disks,
        nics=list(devices.nics),
        name=record.name,
        vmm_log=layout.log(LogSource.VMM),
        # The guest kernel's console is the machine's output, not the app's: `vmm` source.
        console_log=layout.log(LogSource.VMM),
        vmm_output=layout.vmm_output,
        memory_file=memory_base or (layout.memory if memory_in_file else None),
        memory_private=memory_base is not None,
        free_page_reporting=not record.shareable_memory,
        jail=devices.jail,
    )


def keeps_memory_in_file(record: InstanceRecord, mode: str) -> bool:
    """Whether this boot puts guest RAM in a shared file (`layout.memory`).

    In a file, a standby saves only device state (~50 ms instead of ~175 ms, restore
    ~120 ms instead of ~215 ms for 256 MB) but every page the guest touches is written
    back to disk while it runs, which costs a boot ~15% (measured: 3.44 s vs 3.00 s).
    `auto` pays that only for instances that auto-standby puts to sleep and wakes often.
    """
    if record.shareable_memory:  # its saved RAM file is what clones will map
        return True
    if mode != "auto":
        return mode == "always"
    return record.auto_standby is not None and record.auto_standby.enabled
