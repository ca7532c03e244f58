"""The long-lived parts of a running server, built once and shared by all requests.

This is the composition root: every cross-manager link is passed here, at
construction, explicitly (no attribute wiring afterwards).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial

from ember.api.auth import load_or_create_secret
from ember.config import Settings
from ember.errors import NotFound
from ember.groups import GroupManager, waker_socket
from ember.hypervisor import Hypervisors, resolve_hypervisors
from ember.images.blobs import BlobStore
from ember.images.manager import ImageManager
from ember.ingress import IngressManager
from ember.instances import InstanceManager
from ember.instances.usage import digest_users
from ember.network import DnsServer, NetworkManager, NetworkSettings
from ember.registry import Registry, RegistryService
from ember.store import Store
from ember.system import BootSystem
from ember.volumes import VolumeManager


@dataclass
class Services:
    settings: Settings
    store: Store
    jwt_secret: bytes
    images: ImageManager
    registry: RegistryService
    hypervisors: Hypervisors
    system: BootSystem
    network: NetworkManager | None  # None: networking is off on this server
    instances: InstanceManager
    ingresses: IngressManager
    volumes: VolumeManager
    groups: GroupManager
    dns: DnsServer | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(settings.db_path)
        # One blob store for pulls and pushes, so one collector (the image manager's).
        blobs = BlobStore(settings.data_dir / "blobs")
        port = settings.port
        storage = Registry(
            store,
            blobs,
            settings.data_dir,
            hosts={settings.listen, f"localhost:{port}", f"127.0.0.1:{port}"},
        )
        images = ImageManager(
            store,
            settings.data_dir,
            blobs,
            local_registry=storage,
            digest_users=partial(digest_users, store),
            concurrency=settings.build_concurrency,
            insecure_registries=settings.insecure_registries,
        )
        registry = RegistryService(
            storage, images, upload_max_age=settings.registry_upload_max_age_seconds
        )
        hypervisors = resolve_hypervisors(settings.accel)  # detects the accelerator once
        system = BootSystem(settings.system_path)
        network = (
            NetworkManager(store, NetworkSettings.from_settings(settings))
            if settings.network_enabled
            else None
        )
        volumes = VolumeManager(store, settings.data_dir)
        instances = InstanceManager(
            store,
            settings,
            images=images,
            hypervisors=hypervisors,
            system=system.current,
            network=network,
            volumes=volumes,
        )
        ingresses = IngressManager(store, settings, partial(_instance_exists, instances))
        groups = GroupManager(
            store, instances, ingresses, waker_socket(settings.runtime_dir, settings.data_dir)
        )
        return cls(
            settings=settings,
            store=store,
            jwt_secret=load_or_create_secret(settings.data_dir),
            images=images,
            registry=registry,
            hypervisors=hypervisors,
            system=system,
            network=network,
            instances=instances,
            ingresses=ingresses,
            volumes=volumes,
            groups=groups,
        )

    async def start(self) -> None:
        """Start background work (queues, reconcilers) once the event loop runs.

        The network comes up before instances are adopted (their TAPs hang on the
        bridge); a network that cannot come up stops the server with its reason."""
        await self.images.open()
        await self.registry.open()
        await self.system.open()
        if self.network is not None:
            await asyncio.to_thread(self.network.open)
            await asyncio.to_thread(self.network.adopt)
            self.dns = self.network.dns_server()
            await self.dns.start()
        await self.instances.open()
        await self.ingresses.open()
        await self.groups.open()

    async def stop(self) -> None:
        await self.groups.close()
        await self.ingresses.close()  # leaves Caddy serving: it outlives a restart
        await self.instances.close()
        if self.dns is not None:
            await self.dns.stop()
        await self.system.close()
        await self.registry.close()
        await self.images.close()
        self.store.close()


def _instance_exists(instances: InstanceManager, ref: str) -> bool:
    """Whether an instance name or id names an instance (ingress rules must)."""
    try:
        instances.get(ref)
    except NotFound:
        return False
    return True
