"""The long-lived parts of a running server, built once and shared by all requests."""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.api.auth import load_or_create_secret
from ember.config import Settings
from ember.errors import NotFound
from ember.images.manager import ImageManager
from ember.ingress import IngressManager
from ember.instances.manager import InstanceManager
from ember.registry import Registry
from ember.store import Store
from ember.volumes import VolumeManager


@dataclass
class Services:
    settings: Settings
    store: Store
    jwt_secret: bytes
    images: ImageManager
    registry: Registry
    instances: InstanceManager
    ingresses: IngressManager = field(init=False)  # built from the fields above
    volumes: VolumeManager

    def __post_init__(self) -> None:
        self.ingresses = IngressManager(self.store, self.settings, self._instance_exists)

    def _instance_exists(self, ref: str) -> bool:
        """Whether an instance name or id names an instance (ingress rules must)."""
        try:
            self.instances.get(ref)
        except NotFound:
            return False
        return True

    @classmethod
    def build(cls, settings: Settings) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(settings.db_path)
        images = ImageManager(
            store,
            settings.data_dir,
            concurrency=settings.build_concurrency,
            insecure_registries=settings.insecure_registries,
        )
        registry = Registry(store, images.blobs, settings.data_dir)
        port = settings.port
        images.local_hosts = {settings.listen, f"localhost:{port}", f"127.0.0.1:{port}"}
        images.local_resolver = lambda repository, reference: registry.resolve(
            repository, reference
        )[0]
        images.gc_roots = registry.gc_roots  # the blob store is shared: so is collection
        return cls(
            settings=settings,
            store=store,
            jwt_secret=load_or_create_secret(settings.data_dir),
            images=images,
            registry=registry,
            instances=InstanceManager(store, settings, images),
            volumes=VolumeManager(store, settings.data_dir),
        )

    async def start(self) -> None:
        """Start background work (queues, reconcilers) once the event loop runs."""
        await self.images.open()
        await self.instances.open()
        await self.ingresses.open()

    async def stop(self) -> None:
        await self.ingresses.close()  # leaves Caddy serving: it outlives a restart
        await self.instances.close()
        await self.images.close()
        self.store.close()
