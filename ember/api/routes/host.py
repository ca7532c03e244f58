"""`/resources` and `/capabilities`: what this host has and can do, in Hypeman's shapes.

The figures come from the same places the server acts on: admission's rule for
CPU and memory (`ember.instances.capacity`), the hypervisors resolved once at
start (with the accelerator and why), and the network manager when networking
is on. Nothing here is configured by hand.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from ember import __version__
from ember.api.deps import ServicesDep
from ember.api.services import Services
from ember.hypervisor import HYPERVISOR_NAMES
from ember.hypervisor.accel import hardware_kvm_usable
from ember.instances import capacity

router = APIRouter(tags=["host"])
API_VERSION = "hypeman 0.28.0"  # the official client whose shapes this server speaks
FEATURES = [
    "instances", "images", "volumes", "ingress", "exec", "cp", "logs", "registry",
    "standby", "restart-policy", "health-check", "ttl",
]  # fmt: skip


class ResourceStatus(BaseModel):
    type: str
    capacity: int
    oversub_ratio: float
    effective_limit: int
    allocated: int
    available: int
    source: str | None = None


class ResourceAllocation(BaseModel):
    instance_id: str
    instance_name: str
    cpu: int | None = None
    memory_bytes: int | None = None
    disk_bytes: int | None = None
    disk_io_bps: int | None = None
    network_download_bps: int | None = None
    network_upload_bps: int | None = None


class Resources(BaseModel):
    cpu: ResourceStatus
    memory: ResourceStatus
    disk: ResourceStatus
    disk_io: ResourceStatus
    network: ResourceStatus
    allocations: list[ResourceAllocation]


@router.get("/resources", response_model=Resources, summary="Host capacity and allocations")
async def resources(svc: ServicesDep) -> Resources:
    manager, settings = svc.instances, svc.settings
    records = manager.find()
    limits = manager.core.limits
    allocations = [_allocation(svc, r) for r in records]
    active_ids = {r.id for r in capacity.active(records)}
    running = [a for a in allocations if a.instance_id in active_ids]
    download = sum(a.network_download_bps or 0 for a in running)
    return Resources(
        cpu=_answer(capacity.cpu(records, limits, settings.cpu_oversubscription)),
        memory=_answer(capacity.memory(records, limits, settings.memory_oversubscription)),
        disk=_answer(capacity.disk(settings.data_dir)),
        disk_io=_answer(capacity.limits_only("disk_io", sum(a.disk_io_bps or 0 for a in running))),
        network=_answer(capacity.limits_only("network", download)),
        allocations=allocations,
    )


def _answer(status: capacity.Status) -> ResourceStatus:
    return ResourceStatus.model_validate(status, from_attributes=True)


def _allocation(svc: Services, record: Any) -> ResourceAllocation:
    lease = svc.instances.lease(record)
    up = record in capacity.active([record])
    return ResourceAllocation(
        instance_id=record.id,
        instance_name=record.name,
        cpu=record.vcpus if up else None,
        memory_bytes=record.memory_bytes if up else None,
        disk_bytes=record.overlay_bytes,
        disk_io_bps=record.disk_io_bps,
        network_download_bps=lease.download_rate if lease else None,
        network_upload_bps=lease.upload_rate if lease else None,
    )


# ---- capabilities ------------------------------------------------------------------------


class _Open(BaseModel):
    """Hypeman's fields, plus Ember's own details (the official client ignores extras)."""

    model_config = ConfigDict(extra="allow")


class Runtime(_Open):
    name: str
    available: bool
    features: list[str]


class DefaultRuntime(BaseModel):
    name: str
    available: bool


class Host(BaseModel):
    os: str
    arch: str


class ImagesInfo(BaseModel):
    default_platform: str
    platforms: list[str]


class NetworkInfo(_Open):
    model: Literal["bridge", "nat"]
    guest_to_guest: bool
    gateway: str | None = None
    subnet: str | None = None


class Server(BaseModel):
    version: str
    api_version: str


class Capabilities(BaseModel):
    default_runtime: DefaultRuntime
    features: list[str]
    host: Host
    images: ImagesInfo
    network: NetworkInfo
    runtimes: list[Runtime]
    server: Server


@router.get("/capabilities", response_model=Capabilities, summary="What this server can do")
async def capabilities(svc: ServicesDep) -> Capabilities:
    runtimes = _runtimes(svc)
    default = next(r for r in runtimes if r.name == "qemu")
    arch = _arch()
    return Capabilities(
        default_runtime=DefaultRuntime(name=default.name, available=default.available),
        features=FEATURES,
        host=Host(os=platform.system().lower(), arch=arch),
        images=ImagesInfo(default_platform=f"linux/{arch}", platforms=[f"linux/{arch}"]),
        network=_network(svc),
        runtimes=runtimes,
        server=Server(version=__version__, api_version=API_VERSION),
    )


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _runtimes(svc: Services) -> list[Runtime]:
    hypervisors = svc.hypervisors
    out = []
    for name in sorted(HYPERVISOR_NAMES):
        backend = hypervisors.available.get("qemu" if name == "qemu-microvm" else name)
        if backend is None:
            reason = hypervisors.unavailable.get(name, "not available on this host")
            out.append(Runtime(name=name, available=False, features=[], unavailable_reason=reason))
            continue
        caps = backend.capabilities
        features = [
            feature
            for feature, present in (
                ("standby", caps.snapshot),
                ("snapshots", caps.snapshot),
                ("pause", True),
                ("hotplug-memory", caps.hotplug_memory),
                ("vsock", caps.vsock),
                ("gpu-passthrough", caps.gpu),
                ("disk-io-limit", caps.disk_io_limit),
            )
            if present
        ]
        accel = str(getattr(backend, "accel", "unknown"))
        out.append(
            Runtime(
                name=name,
                available=True,
                features=features,
                accelerator=accel,
                accelerator_reason=_accel_reason(accel, svc.settings.accel),
                confinement=svc.instances.confinement.as_dict(),
            )
        )
    return out


def _accel_reason(accel: str, requested: str, root: Path = Path("/")) -> str:
    """Why this accelerator: the same tests as `ember.hypervisor.accel.detect_accel`."""
    if requested != "auto":
        return f"EMBER_ACCEL={requested}"
    if accel == "kvm":
        return "hardware virtualization (vmx/svm) and /dev/kvm are usable"
    if hardware_kvm_usable(root):
        return "KVM is usable but was not chosen"
    if (root / "sys/module/kvm_pvm").exists():
        return "this host's KVM is PVM (kvm_pvm), under which a stock guest kernel hangs"
    if not os.access(root / "dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is missing or not accessible"
    return "the CPU shows no hardware virtualization flag (vmx/svm)"


def _network(svc: Services) -> NetworkInfo:
    if svc.network is None:
        return NetworkInfo(model="bridge", guest_to_guest=False, enabled=False)
    details = svc.network.capabilities()
    return NetworkInfo(
        model="bridge",
        guest_to_guest=not details.get("isolation", True),
        gateway=str(details["gateway"]),
        subnet=str(details["subnet"]),
        enabled=True,
        **{k: v for k, v in details.items() if k not in ("model", "gateway", "subnet")},
    )
