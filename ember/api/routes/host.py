"""`/resources` and `/capabilities`: what this host has and can do, in Hypeman's shapes.

The figures come from the same places the server acts on: admission's rule for
CPU and memory (`ember.instances.capacity`), the hypervisors resolved once at
start (with the accelerator and why), and the network manager when networking
is on. Nothing here is configured by hand.
"""

from __future__ import annotations

import platform

from fastapi import APIRouter

from ember import __version__
from ember.api.deps import ServicesDep
from ember.api.schemas.host import (
    Capabilities,
    DefaultRuntime,
    Host,
    ImagesInfo,
    NetworkInfo,
    Resources,
    Runtime,
    Server,
)
from ember.api.services import Services
from ember.hypervisor import HYPERVISOR_NAMES

router = APIRouter(tags=["host"])
API_VERSION = "hypeman 0.28.0"  # the official client whose shapes this server speaks
FEATURES = [
    "instances", "images", "volumes", "ingress", "exec", "cp", "logs", "registry",
    "standby", "restart-policy", "health-check", "ttl", "devices",
]  # fmt: skip


@router.get("/resources", response_model=Resources, summary="Host capacity and allocations")
async def resources(svc: ServicesDep) -> Resources:
    return Resources.of(svc.instances.usage())


# ---- capabilities ------------------------------------------------------------------------


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
        backend = hypervisors.backend(name)
        if backend is None:
            reason = hypervisors.unavailable_reason(name)
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
        out.append(
            Runtime(
                name=name,
                available=True,
                features=features,
                accelerator=hypervisors.accel.accel,
                accelerator_reason=hypervisors.accel.reason,
                confinement=svc.instances.confinement.as_dict(),
            )
        )
    return out


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
