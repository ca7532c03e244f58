"""An in-process `InstanceManager` on the fake hypervisor and agent (no QEMU, no server)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ember.config import Settings
from ember.hypervisor import Hypervisors
from ember.hypervisor.accel import AccelChoice
from ember.images.models import ImageRecord, ImageStatus
from ember.instances import InstanceManager
from ember.instances.expiry import Reaper
from ember.instances.layout import InstanceLayout
from ember.instances.models import InstanceRecord
from ember.instances.plan import BootDevices, CreatePlan
from ember.instances.request import CreateInstanceRequest
from ember.instances.resources import InstanceResource
from ember.instances.state import State
from ember.server import build_instances
from ember.store import Store
from ember.system import BootArtifacts
from ember.testkit.fakevm import FakeHypervisor
from ember.volumes import VolumeManager

DIGEST = "sha256:" + "0" * 64


class FakeImages:
    """One ready image whose root disk is an empty file."""

    def __init__(self, root: Path) -> None:
        self.rootfs = root / "rootfs.ext4"
        self.rootfs.write_bytes(b"")
        self.held = 0

    def get(self, name: str) -> ImageRecord:
        return ImageRecord(id="i" * 24, name=name, digest=DIGEST, status=ImageStatus.READY,
                           cmd=["/hello"], platform="linux/amd64")  # fmt: skip

    def rootfs_path(self, record: ImageRecord) -> Path:
        return self.rootfs

    def rootfs_of(self, digest: str) -> Path:
        return self.rootfs

    def release_rootfs(self, digest: str) -> None:
        pass


class Lease(InstanceResource):
    """Stands in for a network lease: held from create to delete, plugged in at each boot;
    fails at the step it is told to."""

    name = "lease"

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.attached: set[str] = set()
        self.fail_on = ""

    def _step(self, what: str) -> None:
        if what == self.fail_on:
            raise RuntimeError(f"lease cannot {what}")

    async def acquire(self, plan: CreatePlan, layout: InstanceLayout) -> None:
        self._step("acquire")
        self.held.add(plan.record.id)

    async def release(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        self.held.discard(record.id)

    async def attach(self, record: InstanceRecord, layout: InstanceLayout) -> BootDevices:
        self._step("attach")
        self.attached.add(record.id)
        return BootDevices()

    async def detach(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        self.attached.discard(record.id)


@dataclass
class Rig:
    manager: InstanceManager
    vmm: FakeHypervisor
    lease: Lease
    data: Path
    run: Path
    reaper: Reaper

    @property
    def core(self):  # type: ignore[no-untyped-def]
        return self.manager.core

    async def running(self, name: str = "a", **fields: object) -> InstanceRecord:
        request = CreateInstanceRequest.model_validate(
            {"name": name, "image": "hello", "size": "128MB", **fields}
        )
        record = await self.manager.create(request)
        record, timed_out = await self.manager.wait(record.id, State.RUNNING, 10)
        assert not timed_out and record.state == State.RUNNING, record
        return record

    def files(self) -> set[str]:
        """Every file left under the data dir's instance and snapshot roots."""
        roots = [self.data / "instances", self.data / "snapshots", self.run]
        return {str(p.relative_to(self.data.parent)) for r in roots if r.exists()
                for p in r.rglob("*") if p.is_file()}  # fmt: skip

    def assert_clean(self, instance_id: str) -> None:
        """Nothing of the instance is left: no record, file, lease, lock or VMM."""
        assert self.core.repo.get(instance_id) is None
        assert not (self.data / "instances" / instance_id).exists()
        assert not (self.run / instance_id).exists()
        assert instance_id not in self.lease.held | self.lease.attached
        lock = self.core.locks.get(instance_id)
        assert lock is None or not lock.locked()
        assert instance_id not in self.core.monitors


@pytest.fixture(params=["always", "never"], ids=["ram-file", "ram-streamed"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """A manager whose VMs run on the fake hypervisor, RAM in a file or streamed."""
    top = Path(tempfile.mkdtemp(prefix="ember-fast-", dir="/tmp"))
    # No jail: the fake runs no VMM to confine, and a jail would make host cgroups that the
    # fake VMs, left running when the rig closes, never give back.
    settings = Settings(
        data_dir=top / "data", runtime_dir=top / "run", network_enabled=False,
        guest_memory_file=request.param, snapshot_compression="none",
        snapshot_compression_delay_seconds=0, jail="off",
        stop_timeout_seconds=0.2,  # the fake workload never ends on SIGTERM: forced after
    )  # fmt: skip
    settings.data_dir.mkdir()
    store = Store(settings.db_path)
    vmm, lease = FakeHypervisor(), Lease()
    system = BootArtifacts(kernel=top / "vmlinux", initrd=top / "initrd", kernel_version="6",
                           initrd_hash="x")  # fmt: skip
    hypervisors = Hypervisors({"qemu": vmm}, {}, AccelChoice("tcg", "fake"))
    parts = build_instances(
        store, settings, images=FakeImages(top), hypervisors=hypervisors,
        system=lambda: system, network=None, volumes=VolumeManager(store, settings.data_dir),
        resources=[lease],
    )  # fmt: skip
    try:
        async with parts.running() as manager:
            yield Rig(manager, vmm, lease, settings.data_dir, settings.runtime_dir, parts.reaper)
    finally:
        for vm in vmm.running():
            vmm.kill(vm.handle)
        store.close()
        shutil.rmtree(top, ignore_errors=True)
