"""The disks every instance holds: its own files (overlay disk, logs) and its image's root."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Protocol

from ember.guest.config import create_overlay_disk
from ember.images.models import ImageRecord
from ember.instances.layout import InstanceLayout, Layout
from ember.instances.models import InstanceRecord
from ember.instances.plan import CreatePlan
from ember.instances.resources import InstanceResource


class RootDiskSource(Protocol):
    """What instances need from the image manager."""

    def get(self, name: str) -> ImageRecord: ...

    def rootfs_path(self, record: ImageRecord) -> Path:
        """The root disk of a ready image; refuses images that are not ready."""
        ...

    def rootfs_of(self, digest: str) -> Path: ...

    def release_rootfs(self, digest: str) -> None: ...


class InstanceFiles(InstanceResource):
    """The instance's directories and its writable overlay disk."""

    name = "instance files"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    async def acquire(self, plan: CreatePlan, layout: InstanceLayout) -> None:
        layout.dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(create_overlay_disk, layout.overlay, plan.record.overlay_bytes)

    async def release(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        shutil.rmtree(layout.run, ignore_errors=True)
        shutil.rmtree(layout.dir, ignore_errors=True)

    async def detach(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        shutil.rmtree(layout.run, ignore_errors=True)  # sockets and pid file of that boot

    def sweep(self, live_ids: set[str]) -> None:
        for orphan in self.layout.instance_ids_on_disk() - live_ids:
            paths = self.layout.of(orphan)
            shutil.rmtree(paths.run, ignore_errors=True)
            shutil.rmtree(paths.dir, ignore_errors=True)


class RootDisk(InstanceResource):
    """The image's root disk: kept while any instance boots from its digest."""

    name = "root disk"

    def __init__(self, images: RootDiskSource) -> None:
        self.images = images

    async def acquire(self, plan: CreatePlan, layout: InstanceLayout) -> None:
        self.images.rootfs_of(plan.record.image_digest)  # still there

    async def release(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        self.images.release_rootfs(record.image_digest)
