"""Create, standby, restore, fork, snapshot and delete on the fake hypervisor, failing
at every step in turn: the state and `state_error` are as documented and nothing is left
(no file, record, lease, held lock or VMM). No QEMU: milliseconds per case."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from ember.errors import EmberError, InvalidState, Unavailable
from ember.instances.saved import RESTORE_STEPS, Step, instance_slot, recover_saved, restore
from ember.instances.saved.restore import Restoring
from ember.instances.state import State
from ember.snapshots.compression import Compression, CompressionConfig, compress_recorded

from .conftest import Rig

SMALL = {"overlay_size": "64MB"}


def failing(name: str) -> tuple[Step, ...]:
    """The restore steps with `name` failing once it has done its work."""

    def wrap(step: Step) -> Step:
        async def run(r: Restoring) -> None:
            await step.run(r)
            raise RuntimeError(f"{name} broke")

        return dataclasses.replace(step, run=run) if step.name == name else step

    return tuple(wrap(s) for s in RESTORE_STEPS)


async def standby(rig: Rig, name: str = "a") -> str:
    record = await rig.running(name, **SMALL)
    await rig.manager.standby(record.id)
    return record.id


def saved_files(rig: Rig, instance_id: str) -> set[str]:
    paths = rig.core.paths(instance_id)
    return {p.name for p in paths.saved_dir.iterdir()} | (
        {"memory.ram"} if paths.memory.exists() else set()
    )


# ---- create and delete ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["lease acquire", "lease attach", "vmm start"])
async def test_a_create_failing_at_each_step_leaves_nothing(rig: Rig, where: str) -> None:
    if where == "vmm start":
        rig.vmm.fail.add("start")
    else:
        rig.lease.fail_on = where.split()[1]
    with pytest.raises((RuntimeError, EmberError), match=r"lease cannot|fake start failed"):
        await rig.running("a", **SMALL)
    assert rig.core.repo.all() == []
    assert rig.files() == set()
    assert rig.lease.held == rig.lease.attached == set()
    assert rig.vmm.running() == []


async def test_delete_of_a_standby_leaves_nothing(rig: Rig) -> None:
    instance_id = await standby(rig)
    await rig.manager.delete(instance_id)
    rig.assert_clean(instance_id)
    assert rig.files() == set()


# ---- standby -------------------------------------------------------------------------


async def test_standby_then_restore_round_trip(rig: Rig) -> None:
    instance_id = await standby(rig)
    assert not rig.core.lock(instance_id).locked()  # the answer holds no lock
    await rig.manager.jobs.wait(f"vmm-exit:{instance_id}")
    record = rig.core.current(instance_id)
    assert record.state == State.STANDBY and record.pid is None and record.standby is not None
    assert record.standby.devices == record.vm_devices
    assert rig.vmm.running() == []
    assert instance_id not in rig.lease.attached  # the boot's resources went with the VMM
    record = await rig.manager.restore(instance_id)
    assert record.state == State.RUNNING and record.standby is None
    assert not rig.core.paths(instance_id).saved_dir.exists()
    assert rig.vmm.calls[-1] == "restore" and len(rig.vmm.running()) == 1


async def test_a_restore_right_after_standby_waits_for_the_old_vmm(rig: Rig) -> None:
    record = await rig.running("a", **SMALL)
    await rig.manager.standby(record.id)
    restored = await rig.manager.restore(record.id)  # the standby's VMM may still be quitting
    assert restored.state == State.RUNNING and len(rig.vmm.running()) == 1
    assert rig.vmm.calls[-3:] == ["quit", "collect_output", "restore"]


@pytest.mark.parametrize("fail", ["save"])
async def test_a_standby_failing_resumes_the_vm_and_removes_what_it_wrote(
    rig: Rig, fail: str
) -> None:
    record = await rig.running("a", **SMALL)
    rig.vmm.fail.add(fail)
    with pytest.raises(Unavailable, match="runs on"):
        await rig.manager.standby(record.id)
    record = rig.core.current(record.id)
    assert record.state == State.RUNNING and record.standby is None
    assert not rig.core.paths(record.id).saved_dir.exists()
    assert rig.vmm.calls[-1] == "resume"
    assert not rig.core.lock(record.id).locked()


# ---- restore -------------------------------------------------------------------------


@pytest.mark.parametrize("step", [s.name for s in RESTORE_STEPS])
async def test_a_restore_failing_at_each_step_stays_in_standby_with_its_saved_vm(
    rig: Rig, step: str
) -> None:
    instance_id = await standby(rig)
    before = saved_files(rig, instance_id)
    with pytest.raises(Unavailable, match=f"the saved VM is kept: {step} broke"):
        await restore(rig.core, rig.manager.jobs, None, instance_id, steps=failing(step))
    record = rig.core.current(instance_id)
    assert record.state == State.STANDBY and record.standby is not None
    assert record.state_error is not None and f"{step} broke" in record.state_error
    assert saved_files(rig, instance_id) == before
    assert rig.vmm.running() == []  # a VMM it started is gone again
    assert instance_id not in rig.lease.attached
    assert not rig.core.lock(instance_id).locked()
    record = await rig.manager.restore(instance_id)  # and the next restore works
    assert record.state == State.RUNNING and record.state_error is None


async def test_a_restore_failing_in_the_hypervisor_keeps_the_saved_vm(rig: Rig) -> None:
    instance_id = await standby(rig)
    rig.vmm.fail.add("restore")
    with pytest.raises(Unavailable, match="fake restore failed"):
        await rig.manager.restore(instance_id)
    record = rig.core.current(instance_id)
    assert record.state == State.STANDBY and record.state_error is not None
    assert instance_id not in rig.lease.attached


async def test_a_saved_vm_is_refused_by_a_vmm_with_other_devices(rig: Rig) -> None:
    instance_id = await standby(rig)
    rig.vmm.extra_devices = ["virtio-balloon-device"]  # a newer build adds a device
    with pytest.raises(InvalidState, match="has the devices"):
        await rig.manager.restore(instance_id)
    record = rig.core.current(instance_id)
    assert record.state == State.STANDBY and "virtio-balloon-device" in (record.state_error or "")
    assert "restore" not in rig.vmm.calls[-3:]
    rig.vmm.extra_devices = []
    assert (await rig.manager.restore(instance_id)).state == State.RUNNING


async def test_the_restored_guest_gets_its_clock_set(rig: Rig) -> None:
    instance_id = await standby(rig)
    await rig.manager.restore(instance_id)
    await rig.manager.jobs.wait(f"clock:{instance_id}")
    vm = rig.vmm.running()[0]
    assert vm.agent is not None and [r for r, _ in vm.agent.requests] == ["SET_TIME"]


# ---- compression and recovery --------------------------------------------------------


async def test_compression_then_restore_from_the_compressed_payload(rig: Rig) -> None:
    record = await rig.running("a", **SMALL)
    lz4 = CompressionConfig(enabled=True, algorithm="lz4")
    await rig.manager.standby(record.id, compression=lz4)
    await rig.manager.jobs.wait(f"vmm-exit:{record.id}")  # compression starts after it
    await rig.manager.jobs.wait(f"saved:{record.id}")
    saved = rig.core.current(record.id).standby
    assert saved is not None and saved.compression_state == "compressed"
    paths = rig.core.paths(record.id)
    assert not paths.payload(saved.memory_in_file).exists()
    assert (await rig.manager.restore(record.id)).state == State.RUNNING


async def test_recovery_after_a_crash_mid_compression(rig: Rig) -> None:
    instance_id = await standby(rig)
    slot = instance_slot(rig.core, instance_id)
    saved = slot.read()
    assert saved is not None
    raw = slot.files.payload(saved.memory_in_file)
    partial = slot.files.compressed(raw, "zstd").with_suffix(".zst.partial")
    partial.write_bytes(b"cut short")
    slot.record("compressing", None, None, None)  # the server died here
    recover_saved(slot)
    assert not partial.exists() and raw.exists()
    assert (slot.read() or saved).compression_state == "none"
    # Finished but the raw payload not yet removed: it goes now.
    size = await compress_recorded(raw, slot.files.compressed(raw, "zstd"),
                                   Compression("zstd", 1), threading.Event(), slot.record,
                                   "test")  # fmt: skip
    assert size is not None
    slot.record("compressed", Compression("zstd", 1).config, size, None)
    recover_saved(slot)
    assert not raw.exists()
    assert (await rig.manager.restore(instance_id)).state == State.RUNNING


# ---- snapshots and forks -------------------------------------------------------------


async def test_snapshot_of_a_running_vm_pauses_copies_and_resumes(rig: Rig) -> None:
    record = await rig.running("a", **SMALL)
    snap = await rig.manager.create_snapshot(record.id, "Standby", name="s")
    assert rig.core.current(record.id).state == State.RUNNING
    assert rig.vmm.calls[-3:] == ["pause", "save", "resume"]
    files = rig.manager.snapshots.layout.of(snap.id)
    assert files.vmstate.exists() and files.overlay.exists()
    fork = await rig.manager.fork_snapshot(snap.id, "b", None, None)
    assert fork.state == State.RUNNING and fork.id != record.id


@pytest.mark.parametrize("fail", ["save", "resume"])
async def test_a_snapshot_failing_leaves_no_snapshot(rig: Rig, fail: str) -> None:
    record = await rig.running("a", **SMALL)
    rig.vmm.fail.add(fail)
    with pytest.raises(Unavailable):
        await rig.manager.create_snapshot(record.id, "Standby", name="s")
    assert rig.manager.snapshots.store.find() == []
    assert not (rig.data / "snapshots").exists() or not any((rig.data / "snapshots").iterdir())


async def test_restore_into_its_instance_places_then_restores(rig: Rig) -> None:
    instance_id = await standby(rig)
    snap = await rig.manager.create_snapshot(instance_id, "Standby", name="s")
    await rig.manager.restore(instance_id)
    await rig.manager.stop(instance_id)
    rig.vmm.fail.add("restore")
    with pytest.raises(Unavailable):
        await rig.manager.restore_snapshot(instance_id, snap.id, None, None)
    record = rig.core.current(instance_id)
    assert record.state == State.STANDBY and record.state_error is not None  # placed, kept
    rig.vmm.fail.clear()
    assert (await rig.manager.restore(instance_id)).state == State.RUNNING


@pytest.mark.parametrize("where", ["lease acquire", "vmm restore"])
async def test_a_fork_failing_at_each_step(rig: Rig, where: str) -> None:
    source = await standby(rig)
    before = rig.lease.held.copy()
    if where == "lease acquire":
        rig.lease.fail_on = "acquire"
        with pytest.raises(RuntimeError):
            await rig.manager.fork(source, "b", from_running=False, target=State.RUNNING)
        assert rig.core.repo.by_name("b") is None and rig.lease.held == before
        assert {p.name for p in (rig.data / "instances").iterdir()} == {source}
    else:
        rig.vmm.fail.add("restore")
        with pytest.raises(Unavailable):
            await rig.manager.fork(source, "b", from_running=False, target=State.RUNNING)
        fork = rig.core.repo.by_name("b")
        assert fork is not None and fork.state == State.STANDBY and fork.state_error
    source_record = rig.core.current(source)
    assert source_record.state == State.STANDBY and source_record.state_error is None
    assert not rig.core.lock(source).locked()


async def test_fork_from_running_is_standby_fork_restore(rig: Rig) -> None:
    record = await rig.running("a", **SMALL)
    fork = await rig.manager.fork(record.id, "b", from_running=True, target=None)
    assert fork.state == State.RUNNING
    assert rig.core.current(record.id).state == State.RUNNING
    assert rig.vmm.calls.count("restore") == 2  # the source, then the fork
    await rig.manager.delete(fork.id)
    rig.assert_clean(fork.id)


# ---- a caller that gives up (the client hung up) -------------------------------------


async def test_a_standby_cancelled_mid_save_resumes_the_vm_and_frees_the_lock(rig: Rig) -> None:
    record = await rig.running("a", **SMALL)
    rig.vmm.hang.add("save")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await rig.manager.standby(record.id)
    current = rig.core.current(record.id)
    assert current.state == State.RUNNING and current.standby is None
    assert not rig.core.paths(record.id).saved_dir.exists()
    assert rig.vmm.calls[-1] == "resume" and not rig.core.lock(record.id).locked()


async def test_a_restore_cancelled_in_the_hypervisor_stays_in_standby(rig: Rig) -> None:
    instance_id = await standby(rig)
    rig.vmm.hang.add("restore")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await rig.manager.restore(instance_id)
    record = rig.core.current(instance_id)
    assert record.state == State.STANDBY and record.standby is not None
    assert instance_id not in rig.lease.attached and not rig.core.lock(instance_id).locked()
    rig.vmm.hang.clear()
    assert (await rig.manager.restore(instance_id)).state == State.RUNNING


async def test_a_snapshot_in_the_old_flat_layout_is_moved_at_start(rig: Rig) -> None:
    record = await rig.running("a", **SMALL)
    snap = await rig.manager.create_snapshot(record.id, "Standby", name="s")
    files = rig.manager.snapshots.layout.of(snap.id)
    (files.dir / "volumes").mkdir()
    (files.dir / "volumes" / "volume-overlay-v.ext4").write_bytes(b"disk")
    files.vmstate.rename(files.dir / "vmstate")  # as snapshots were laid out before
    files.saved_dir.rmdir()
    rig.manager.snapshots.recover()
    assert files.vmstate.exists() and files.volume_disk("volume-overlay-v.ext4").exists()
    assert not (files.dir / "volumes").exists()
    assert (await rig.manager.fork_snapshot(snap.id, "b", None, None)).state == State.RUNNING
