"""Templates on the fake hypervisor: a clone maps the template's RAM file copy-on-write,
is told its own identity, and keeps the template from being deleted while it does; the
validation and failure paths leave nothing behind. No QEMU."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import Conflict, InvalidArgument, Unavailable
from ember.guest.protocol import MsgType
from ember.instances.state import State
from ember.snapshots.models import SnapshotRecord
from ember.templates import CreateTemplateRequest, Templates
from ember.templates.manager import BUILDER_PREFIX

from .conftest import Rig

SMALL = {"image": "hello", "size": "128MB", "overlay_size": "64MB"}


def request(name: str = "tpl", **fields: object) -> CreateTemplateRequest:
    return CreateTemplateRequest.model_validate({"name": name, **SMALL, **fields})


async def template(rig: Rig, name: str = "tpl") -> tuple[Templates, SnapshotRecord]:
    templates = Templates(rig.manager)
    return templates, await templates.create(request(name))


def builders(rig: Rig) -> list[str]:
    return [r.name for r in rig.core.repo.all() if r.name.startswith(BUILDER_PREFIX)]


def spec_of(rig: Rig, instance_id: str):  # type: ignore[no-untyped-def]
    return rig.vmm.vms[rig.core.current(instance_id).pid or 0].spec


async def test_a_clone_maps_the_template_memory_and_is_told_its_identity(rig: Rig) -> None:
    templates, tpl = await template(rig)
    assert builders(rig) == [] and [t.id for t in templates.all()] == [tpl.id]
    assert templates.get("tpl").id == tpl.id
    base = rig.data / "snapshots" / tpl.id / "memory.ram"
    clone = await templates.clone("tpl", "c1")
    assert clone.state == State.RUNNING and clone.memory_base == str(base)
    spec = spec_of(rig, clone.id)
    assert spec.memory_file == base and spec.memory_private and not spec.free_page_reporting
    assert not rig.core.paths(clone.id).memory.exists()  # mapped, not copied
    agent = rig.vmm.vms[clone.pid or 0].agent
    assert agent is not None
    identity = [f for kind, f in agent.requests if kind == MsgType.SET_IDENTITY.name]
    assert len(identity) == 1 and identity[0]["hostname"] == "c1"
    # The template's workload was stopped before the save; the clone continues it.
    assert tpl.memory is not None and tpl.memory.workload_stopped and identity[0]["cont"] == "1"
    assert len(identity[0]["entropy"]) == 128 and len(identity[0]["machine_id"]) == 32
    assert templates.clones(tpl) == ["instance 'c1'"]


async def test_a_template_with_clones_is_not_deleted_until_they_are_gone(rig: Rig) -> None:
    templates, tpl = await template(rig)
    clone = await templates.clone(tpl.id, "c1")
    with pytest.raises(Conflict, match="in use: instance 'c1'") as refused:
        await templates.delete("tpl")
    assert refused.value.code == "in_use" and (rig.data / "snapshots" / tpl.id).is_dir()
    await rig.manager.standby(clone.id)  # its standby still maps the template
    with pytest.raises(Conflict):
        await templates.delete("tpl")
    await rig.manager.delete(clone.id)
    await templates.delete("tpl")
    assert templates.all() == [] and not (rig.data / "snapshots" / tpl.id).exists()


async def test_a_clone_stands_by_and_restores_onto_the_template_memory(rig: Rig) -> None:
    templates, tpl = await template(rig)
    clone = await templates.clone(tpl.id, "c1")
    saved = (await rig.manager.standby(clone.id)).standby
    assert saved is not None and not saved.memory_in_file and saved.memory_base == clone.memory_base
    assert not saved.foreign_identity  # its own saved VM: nothing to claim again
    restored = await rig.manager.restore(clone.id)
    assert restored.state == State.RUNNING and restored.memory_base == clone.memory_base
    assert spec_of(rig, clone.id).memory_private


async def test_a_stopped_clone_boots_on_its_own_memory_and_frees_the_template(rig: Rig) -> None:
    templates, tpl = await template(rig)
    clone = await templates.clone(tpl.id, "c1")
    await rig.manager.stop(clone.id)
    assert templates.clones(tpl) == []
    started = await rig.manager.start(clone.id)
    assert started.memory_base is None and spec_of(rig, clone.id).memory_file == Path(
        rig.core.paths(clone.id).memory
    )
    await templates.delete(tpl.id)


async def test_a_fork_of_an_ordinary_snapshot_gets_its_own_copy(rig: Rig) -> None:
    source = await rig.running("a", overlay_size="64MB")
    snapshot = await rig.manager.create_snapshot(source.id, "Standby", name="s")
    fork = await rig.manager.fork_snapshot(snapshot.id, "b", State.RUNNING, None)
    assert fork.memory_base is None and not spec_of(rig, fork.id).memory_private
    await rig.manager.snapshots.delete(snapshot.id)  # nothing maps it


async def test_readiness_that_never_passes_leaves_no_template_and_no_builder(rig: Rig) -> None:
    templates = Templates(rig.manager)
    # The fake agent refuses exec: the probe fails until the timeout.
    ready = {"exec": ["true"], "timeout": "300ms", "interval": "50ms"}
    with pytest.raises(Unavailable, match="readiness command did not pass"):
        await templates.create(request(readiness=ready))
    assert templates.all() == [] and builders(rig) == []
    assert not any((rig.data / "snapshots").glob("*"))


async def test_a_builder_that_fails_to_boot_leaves_nothing(rig: Rig) -> None:
    rig.vmm.fail.add("start")
    with pytest.raises(Unavailable):
        await Templates(rig.manager).create(request())
    assert builders(rig) == [] and rig.core.repo.all() == []


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"volumes": [{"volume_id": "v", "mount_path": "/data"}]}, InvalidArgument),
        ({"readiness": {"timeout": "soon"}}, InvalidArgument),
        ({"name": "Bad_Name"}, InvalidArgument),
    ],
)
async def test_bad_requests_are_refused_before_anything_boots(
    rig: Rig, fields: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await Templates(rig.manager).create(request(**fields))  # type: ignore[arg-type]
    assert rig.core.repo.all() == [] and rig.vmm.calls.count("start") == 0


async def test_names_are_unique_among_templates(rig: Rig) -> None:
    templates, _ = await template(rig)
    with pytest.raises(Conflict, match="already exists"):
        await templates.create(request())
    await templates.clone("tpl", "c1")
    with pytest.raises(Conflict, match="already exists"):  # a clone's name is an instance's
        await templates.clone("tpl", "c1")
