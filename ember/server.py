"""The composition root: the one place that builds the server's long-lived parts.

`build(settings)` constructs every manager and background loop from built
dependencies, passed as arguments; `Services.running()` starts them in one
order and stops them in reverse (an `AsyncExitStack`), which is the server's
lifespan. Overrides come the httpx way: `build(settings, hypervisors=...)`
swaps the hypervisor backends (a fake in fast tests), and
`create_app(settings, services=...)` serves parts built elsewhere.

Nothing else constructs a manager or starts a loop: `InstanceManager` is a
facade over parts it is given, and a new feature (templates, groups, builds,
the gateway) gets one line here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Protocol

from ember.api.auth import load_or_create_secret, mint_token
from ember.builds import BuildManager, BuildSettings
from ember.builds.debian_image import ensure_debian_image
from ember.builds.relay import Relay
from ember.cluster.member import memberships
from ember.config import Settings
from ember.devices import DeviceManager
from ember.egress import EgressManager
from ember.errors import NotFound
from ember.groups import GroupManager, waker_socket
from ember.groups.autoscale import AutoscaleManager
from ember.hypervisor import Hypervisors, resolve_hypervisors
from ember.hypervisor.jail import confinement
from ember.hypervisor.qemu import QEMU_BINARY
from ember.images.blobs import BlobStore
from ember.images.manager import ImageManager
from ember.ingress import IngressManager
from ember.instances import InstanceManager
from ember.instances.attachments import VolumeAttachments
from ember.instances.autostandby import AutoStandby
from ember.instances.balloons import running_guests
from ember.instances.core import InstanceCore
from ember.instances.disks import InstanceFiles, RootDisk, RootDiskSource
from ember.instances.egress import MediatedEgress
from ember.instances.expiry import Reaper
from ember.instances.health import HealthMonitor
from ember.instances.jail import vmm_jail
from ember.instances.layout import Layout
from ember.instances.logs import LogRotator, LogSource
from ember.instances.models import InstanceRecord
from ember.instances.networking import NetworkLease
from ember.instances.plan import HostLimits
from ember.instances.resources import InstanceResource, Resources
from ember.instances.snapshot import Snapshots
from ember.instances.standby import standby
from ember.instances.supervisor import Supervisor
from ember.instances.usage import digest_users
from ember.network import DnsServer, NetworkManager, NetworkSettings
from ember.pushes import PushManager
from ember.reclaim import MemoryReclaimer
from ember.registry import Registry, RegistryService
from ember.schedules import ScheduleManager
from ember.snapshots.layout import SnapshotLayout
from ember.snapshots.schedule import Scheduler
from ember.snapshots.store import SnapshotStore
from ember.store import Repository, Store
from ember.system import BootArtifacts, BootSystem
from ember.tasks import BackgroundJobs
from ember.templates import Templates
from ember.volumes import VolumeManager

__all__ = ["InstanceServices", "Services", "build", "build_instances"]


class Loop(Protocol):
    """A background loop the root starts and closes (a `PeriodicTask` owner)."""

    def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class InstanceServices:
    """The instance manager and the loops that act on instances, started after it opened
    in this order and closed in reverse."""

    manager: InstanceManager
    reaper: Reaper
    loops: Sequence[Loop]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[InstanceManager]:
        async with AsyncExitStack() as stack:
            await self.manager.open()
            stack.push_async_callback(self.manager.close)
            await self.reaper.reap()  # those that expired while the server was down
            for loop in self.loops:
                loop.start()
                stack.push_async_callback(loop.close)
            yield self.manager


def build_instances(
    store: Store,
    settings: Settings,
    *,
    images: RootDiskSource,
    hypervisors: Hypervisors,
    system: Callable[[], BootArtifacts],
    network: NetworkManager | None,
    volumes: VolumeManager,
    resources: Sequence[InstanceResource] = (),
) -> InstanceServices:
    """What an instance holds is acquired in this order and released in reverse: its
    files, its root disk, its network lease, its volume attachments, its VMM uid
    (the jail), then `resources`."""
    layout = Layout(settings.data_dir / "instances", settings.runtime_dir)
    held: list[InstanceResource] = [InstanceFiles(layout), RootDisk(images)]
    if network is not None:
        held.append(NetworkLease(network))
    held.append(VolumeAttachments(volumes))
    repo = Repository(store, "instances", InstanceRecord, "instance")
    jail = vmm_jail(settings, repo) if settings.jail == "on" else None
    held += [jail] if jail is not None else []
    core = InstanceCore(
        repo=repo,
        settings=settings,
        layout=layout,
        hypervisors=hypervisors,
        images=images,
        resources=Resources([*held, *resources]),
        limits=HostLimits.detect(settings.max_vcpus),
        system=system,
        networking=network is not None,
    )
    # One-off jobs: saved-VM compressions (`saved:<id>`, `snapshot:<id>`), guest clocks.
    jobs = BackgroundJobs()
    snapshots = Snapshots(core, SnapshotStore(store), SnapshotLayout(settings.data_dir /
                          "snapshots"), jobs, volumes, network)  # fmt: skip
    address = partial(_address, network)
    health = HealthMonitor(core, address)
    auto_standby = AutoStandby(core, address, partial(standby, core, jobs, origin="platform"))
    manager = InstanceManager(
        core, jobs=jobs, snapshots=snapshots, network=network, volumes=volumes, health=health,
        auto_standby=auto_standby,
        confinement=confinement(jail is not None, jail.cgroups if jail else None,
                                binary=QEMU_BINARY,
                                why_off="turned off by EMBER_JAIL=off: every VMM runs as root"),
    )  # fmt: skip
    scheduler = Scheduler(
        snapshots.store, snapshots.take_scheduled, snapshots.delete,
        lambda i: core.repo.get(i) is not None, settings.snapshot_schedule_tick_seconds,
    )  # fmt: skip
    reaper = Reaper(core, manager.delete)
    rotator = LogRotator(partial(_log_paths, core), settings.instance_log_max_bytes)
    # auto_standby last: it is closed first (it may be starting a standby).
    loops: tuple[Loop, ...] = (Supervisor(core), health, reaper, rotator, scheduler, auto_standby)
    return InstanceServices(manager, reaper, loops)


def _address(network: NetworkManager | None, record: InstanceRecord) -> str | None:
    lease = network.lease(record.id) if network is not None else None
    return lease.ip if lease is not None else None


def _log_paths(core: InstanceCore) -> list[Path]:
    return [core.paths(r.id).log(source) for r in core.repo.all() for source in LogSource]


@dataclass
class Services:
    """The long-lived parts of a running server, shared by all requests."""

    settings: Settings
    store: Store
    jwt_secret: bytes
    images: ImageManager
    registry: RegistryService
    pushes: PushManager
    hypervisors: Hypervisors
    system: BootSystem
    network: NetworkManager | None  # None: networking is off on this server
    instances: InstanceManager
    ingresses: IngressManager
    groups: GroupManager
    autoscale: AutoscaleManager
    schedules: ScheduleManager
    templates: Templates
    volumes: VolumeManager
    devices: DeviceManager
    memory: MemoryReclaimer
    instance_services: InstanceServices
    builds: BuildManager
    relay: Relay | None = None  # builder VMs' way to the registry (with the network)
    egress: EgressManager | None = None  # with the network
    dns: DnsServer | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Services]:
        """Start everything once the event loop runs; stop it in reverse on exit.

        The network comes up before instances are adopted (their TAPs hang on the
        bridge); a network that cannot come up stops the server with its reason. Caddy
        outlives a restart: closing the ingresses leaves it serving."""
        async with AsyncExitStack() as stack:
            stack.callback(self.store.close)
            await self.images.open()
            stack.push_async_callback(self.images.close)
            await self.registry.open()
            stack.push_async_callback(self.registry.close)
            await self.pushes.open()
            stack.push_async_callback(self.pushes.close)
            await self.system.open()
            stack.push_async_callback(self.system.close)
            if self.network is not None:
                await asyncio.to_thread(self.network.open)
                await asyncio.to_thread(self.network.adopt)
                self.dns = self.network.dns_server()
                await self.dns.start()
                stack.push_async_callback(self.dns.stop)
            if self.egress is not None:
                await self.egress.open()  # before instances: their sweep reaches it
                stack.push_async_callback(self.egress.close)
            await stack.enter_async_context(self.instance_services.running())
            await self.ingresses.open()
            stack.push_async_callback(self.ingresses.close)
            await self.groups.open()
            stack.push_async_callback(self.groups.close)
            self.autoscale.start()  # closed before the groups it acts on
            stack.push_async_callback(self.autoscale.close)
            self.schedules.start()
            stack.push_async_callback(self.schedules.close)
            self.memory.task.start()
            stack.push_async_callback(self.memory.task.close)
            if self.relay is not None:
                await self.relay.open()
                stack.push_async_callback(self.relay.close)
            await self.builds.open()
            stack.push_async_callback(self.builds.close)
            yield self


def build(settings: Settings, *, hypervisors: Hypervisors | None = None) -> Services:
    """Every long-lived part of the server; `hypervisors` replaces the detected backends."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.db_path)
    # One blob store for pulls and pushes, so one collector (the image manager's).
    blobs = BlobStore(settings.data_dir / "blobs")
    port = settings.port
    hosts = {settings.listen, f"localhost:{port}", f"127.0.0.1:{port}"}
    storage = Registry(store, blobs, settings.data_dir, hosts=hosts)
    images = ImageManager(
        store, settings.data_dir, blobs, local_registry=storage,
        digest_users=partial(digest_users, store), concurrency=settings.build_concurrency,
        insecure_registries=settings.insecure_registries,
    )  # fmt: skip
    hypervisors = hypervisors or resolve_hypervisors(settings.accel)  # detects the accel once
    system = BootSystem(settings.system_path)
    network = (
        NetworkManager(store, NetworkSettings.from_settings(settings))
        if settings.network_enabled
        else None
    )
    relay = (
        Relay((str(network.settings.gateway_ip), settings.builds_registry_relay_port),
              (settings.host, settings.port))
        if network is not None
        else None
    )  # fmt: skip
    registry = RegistryService(
        storage, images, upload_max_age=settings.registry_upload_max_age_seconds,
        aliases={relay.address: settings.listen} if relay is not None else None,
    )  # fmt: skip
    volumes = VolumeManager(store, settings.data_dir)
    egress = (
        EgressManager(settings.data_dir, network, proxy_port=settings.egress_proxy_port,
                      upstream_cafile=settings.egress_upstream_cafile)
        if network is not None
        else None
    )  # fmt: skip
    instance_services = build_instances(
        store, settings, images=images, hypervisors=hypervisors, system=system.current,
        network=network, volumes=volumes,
        resources=[MediatedEgress(egress)] if egress is not None else (),
    )  # fmt: skip
    instances = instance_services.manager
    # A cluster member is the last loop, so it withdraws first.
    loops = (*instance_services.loops, *memberships(settings, instances, images))
    instance_services = replace(instance_services, loops=loops)
    ingresses = IngressManager(store, settings, partial(_instance_exists, instances))
    waker = waker_socket(settings.runtime_dir, settings.data_dir)
    groups = GroupManager(store, instances, ingresses, waker)
    jwt_secret = load_or_create_secret(settings.data_dir)
    templates = Templates(instances)
    builds = BuildManager(
        store,
        BuildSettings(
            root=settings.data_dir / "builds", registry_host=settings.listen,
            own_hosts=frozenset(hosts), relay=relay.address if relay is not None else None,
            default_disk_gb=settings.builds_builder_disk_gb,
            secrets_dir=settings.builds_secrets_dir or settings.data_dir / "build-secrets",
        ),
        instances=instances, images=images, registry=registry, volumes=volumes,
        templates=templates,
        debian_image=partial(ensure_debian_image, images, registry, host=settings.listen,
                             cache_dir=settings.system_path / "builds",
                             mirror=settings.builds_debian_mirror),
        mint_token=partial(mint_token, jwt_secret, "builder", 3600),
    )  # fmt: skip
    templates = Templates(instances)
    return Services(
        settings=settings,
        store=store,
        jwt_secret=jwt_secret,
        images=images,
        registry=registry,
        pushes=PushManager(store, images, settings.insecure_registries),
        hypervisors=hypervisors,
        system=system,
        network=network,
        instances=instances,
        ingresses=ingresses,
        groups=groups,
        autoscale=AutoscaleManager(store, groups, instances, templates),
        schedules=ScheduleManager(store, instances),
        templates=templates,
        volumes=volumes,
        devices=DeviceManager(store),
        memory=MemoryReclaimer(
            partial(running_guests, instances.core),
            threshold_bytes=settings.memory_pressure_threshold_bytes,
            poll_seconds=settings.memory_reclaim_poll_seconds,
        ),
        instance_services=instance_services,
        builds=builds,
        relay=relay,
        egress=egress,
    )


def _instance_exists(instances: InstanceManager, ref: str) -> bool:
    """Whether an instance name or id names an instance (ingress rules must)."""
    try:
        instances.get(ref)
    except NotFound:
        return False
    return True
