"""Attach and detach on a Running instance, over a fake hypervisor and a fake agent: each
step that fails leaves the attachment, the slot table and the VM's disks as they were.
(The real thing, with QEMU and a guest: tests/e2e/test_volume_hotplug.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from ember.config import Settings
from ember.errors import Conflict, Unavailable
from ember.guest.client import AgentClient, AgentError
from ember.hypervisor import Hypervisors
from ember.hypervisor.accel import AccelChoice
from ember.instances.core import InstanceCore
from ember.instances.layout import Layout
from ember.instances.models import InstanceRecord
from ember.instances.mounts import attach_volume, detach_volume
from ember.instances.plan import HostLimits
from ember.instances.resources import Resources
from ember.instances.state import State
from ember.store import Repository, Store
from ember.testkit.fakevm import FakeHypervisor
from ember.volumes import VolumeManager
from ember.volumes.slots import create_empty_slots, fresh_table, load_table, save_table


class FakeAgent:
    connected = True

    def __init__(self, fail: str = "") -> None:
        self.fail, self.mounted = fail, dict[str, str]()

    async def mount_volume(self, serial: str, path: str, *, readonly: bool) -> None:
        if self.fail == "mount":
            raise AgentError(f"mount {serial} at {path}: Not a directory")
        self.mounted[path] = serial

    async def unmount_volume(self, path: str) -> None:
        if self.fail == "unmount":
            raise AgentError(f"unmount {path}: Device or resource busy")
        del self.mounted[path]


class Rig:
    def __init__(self, tmp: Path, hypervisor: FakeHypervisor, agent: FakeAgent) -> None:
        store = Store(tmp / "ember.db")
        self.volumes = VolumeManager(store, tmp)
        self.core = InstanceCore(
            repo=Repository(store, "instances", InstanceRecord, "instance"),
            settings=Settings(data_dir=tmp), layout=Layout(tmp / "instances", tmp / "run"),
            hypervisors=Hypervisors({"qemu": hypervisor}, {}, AccelChoice("tcg", "fake")),
            images=cast(Any, None), resources=Resources([]),
            limits=HostLimits(max_vcpus=1, host_cpus=1, memory_bytes=1 << 30),
            system=cast(Any, None), networking=False,
        )  # fmt: skip
        record = InstanceRecord(
            id="i" * 24, name="vm", image="img", image_digest="d", memory_bytes=1,
            overlay_bytes=1, state=State.RUNNING, pid=1,
        )  # fmt: skip
        self.core.repo.insert(record)
        self.id, self.dir = record.id, self.core.paths(record.id).dir
        self.dir.mkdir(parents=True)
        create_empty_slots(self.dir)
        save_table(self.dir, fresh_table([], self.dir, {}))
        self.core.agents[record.id] = cast(AgentClient, agent)

    def held(self) -> dict[str, str]:
        table = load_table(self.dir)
        assert table is not None
        return table.holders


async def test_attach_and_detach_while_running(tmp_path: Path) -> None:
    hv, agent = FakeHypervisor(), FakeAgent()
    rig = Rig(tmp_path, hv, agent)
    volume = await rig.volumes.create("v", 1)
    await attach_volume(rig.core, rig.volumes, rig.id, "v", "/data", readonly=True)
    assert agent.mounted == {"/data": "ember-vol-0"} and rig.held() == {"ember-vol-0": volume.id}
    assert hv.disks[-1].format == "qcow2" and hv.disks[-1].path.exists()
    await detach_volume(rig.core, rig.volumes, rig.id, "v")
    assert agent.mounted == {} and rig.held() == {} and rig.volumes.attachments_of(rig.id) == []
    assert hv.disks[-1].path == rig.dir / "volume-slot-0.empty"
    assert not (rig.dir / "ember-vol-0.qcow2").exists()  # the read-only layer went


@pytest.mark.parametrize("failing", ["hypervisor", "mount"])
async def test_a_failed_attach_keeps_nothing(failing: str, tmp_path: Path) -> None:
    hv = FakeHypervisor(fail={"change_disk"} if failing == "hypervisor" else None)
    rig = Rig(tmp_path, hv, FakeAgent(fail=failing))
    await rig.volumes.create("v", 1)
    with pytest.raises((Conflict, Unavailable)):
        await attach_volume(rig.core, rig.volumes, rig.id, "v", "/data", readonly=True)
    assert rig.volumes.attachments_of(rig.id) == [] and rig.held() == {}
    if failing == "mount":  # the slot was backed by the volume, then emptied again
        assert [d.format for d in hv.disks] == ["qcow2", "raw"]
    assert not (rig.dir / "ember-vol-0.qcow2").exists()


async def test_a_busy_volume_is_not_detached(tmp_path: Path) -> None:
    hv, agent = FakeHypervisor(), FakeAgent()
    rig = Rig(tmp_path, hv, agent)
    volume = await rig.volumes.create("v", 1)
    await attach_volume(rig.core, rig.volumes, rig.id, "v", "/data", readonly=False)
    agent.fail = "unmount"
    with pytest.raises(Conflict, match=r"could not unmount /data .*busy") as refused:
        await detach_volume(rig.core, rig.volumes, rig.id, "v")
    assert refused.value.code == "volume_busy"
    assert rig.held() == {"ember-vol-0": volume.id} and len(hv.disks) == 1
    assert [a.volume_id for a in rig.volumes.attachments_of(rig.id)] == [volume.id]
