"""The jail's pure parts: QEMU arguments, cgroup limits on a fake hierarchy, uids."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import Unavailable
from ember.hypervisor.jail import (
    SANDBOX,
    Cgroups,
    JailLimits,
    JailSpec,
    cgroup_launcher,
    confinement,
    detect_cgroups,
    jail_args,
)
from ember.instances.jail import VmmJail
from ember.instances.layout import InstanceLayout
from ember.instances.models import InstanceRecord
from ember.instances.plan import CreatePlan

MiB = 1 << 20
LIMITS = JailLimits(memory_bytes=512 * MiB, cpus=2.5, cpu_weight=2, pids=98,
                    io_bps=10 * MiB, io_device="254:0")  # fmt: skip
V1_FILES = {
    "memory": ("memory.limit_in_bytes", "memory.oom_control"),
    "cpu": ("cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares"),
    "blkio": ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"),
    "pids": ("pids.max",),
}


def test_qemu_arguments() -> None:
    assert jail_args(None) == []
    jail = JailSpec(uid=1500000007, gid=1500000007, root=Path("/run/ember/jail-root"))
    assert jail_args(jail) == ["-runas", "1500000007:1500000007", "-chroot",
                               "/run/ember/jail-root", "-sandbox", SANDBOX]  # fmt: skip
    assert cgroup_launcher(jail) == []  # no cgroups: QEMU is started as it is
    joined = JailSpec(1, 1, Path("/r"), (Path("/cg/memory/ember-a/cgroup.procs"),))
    assert cgroup_launcher(joined) == ["/bin/sh", "-c", 'echo $$ > /cg/memory/ember-a/cgroup.procs'
                                       ' && exec "$@"', "ember-vmm"]  # fmt: skip
    # Both break QEMU 7.2 with -daemonize/-runas (its filter comes first): kept out.
    assert "spawn=deny" not in SANDBOX and "elevateprivileges=deny" not in SANDBOX


def fake_v1(root: Path, controllers: tuple[str, ...] = tuple(V1_FILES)) -> None:
    for controller in controllers:
        (root / controller).mkdir(parents=True)
        (root / controller / "tasks").write_text("")


def test_v1_limits_are_written_per_controller(tmp_path: Path) -> None:
    fake_v1(tmp_path)
    cgroups = detect_cgroups(tmp_path)
    assert cgroups is not None and cgroups.version == 1 and cgroups.missing == ()
    for controller, names in V1_FILES.items():  # what the kernel makes on mkdir
        (tmp_path / controller / "ember-i1").mkdir(parents=True)
        for name in names:
            (tmp_path / controller / "ember-i1" / name).write_text("")
    procs = cgroups.create("i1", LIMITS)
    assert procs == tuple(sorted(tmp_path / c / "ember-i1/cgroup.procs" for c in V1_FILES))
    cg = tmp_path / "{}/ember-i1"
    assert read(Path(str(cg).format("memory")) / "memory.limit_in_bytes") == str(512 * MiB)
    assert read(Path(str(cg).format("cpu")) / "cpu.cfs_quota_us") == "250000"
    assert read(Path(str(cg).format("cpu")) / "cpu.shares") == "2048"
    assert read(Path(str(cg).format("pids")) / "pids.max") == "98"
    throttle = Path(str(cg).format("blkio")) / "blkio.throttle.write_bps_device"
    assert read(throttle) == f"254:0 {10 * MiB}"
    assert not cgroups.oom_killed("i1")
    (Path(str(cg).format("memory")) / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
    )
    assert cgroups.oom_killed("i1")


def test_v2_is_one_tree_and_reports_missing_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    cgroups = detect_cgroups(tmp_path)
    assert cgroups == Cgroups(2, {c: tmp_path for c in ("memory", "cpu", "pids")}, ("io",))
    (tmp_path / "ember-i2").mkdir(parents=True)
    for name in ("memory.max", "cpu.max", "cpu.weight", "pids.max", "memory.events"):
        (tmp_path / "ember-i2" / name).write_text("")
    cgroups.create("i2", LIMITS)
    assert read(tmp_path / "ember-i2/cpu.max") == "250000 100000"
    assert read(tmp_path / "ember-i2/cpu.weight") == "200"
    assert "+memory" in read(tmp_path / "cgroup.subtree_control")
    (tmp_path / "ember-i2/memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroups.oom_killed("i2")
    report = confinement(True, cgroups, binary="/nonexistent/qemu")
    assert report.missing["io"] == "the io cgroup controller is not available"
    assert "seccomp" in report.missing


def test_no_hierarchy_and_off_are_reported(tmp_path: Path) -> None:
    assert detect_cgroups(tmp_path) is None
    assert confinement(True, None, binary="qemu").missing["limits"].startswith("no cgroup")
    off = confinement(False, None, binary="qemu", why_off="EMBER_JAIL=off")
    assert off.as_dict() == {"enabled": False, "in_force": {},
                             "not_in_force": {"jail": "EMBER_JAIL=off"}}  # fmt: skip


def read(path: Path) -> str:
    return path.read_text().strip()


class UidStore:
    def __init__(self) -> None:
        self.records: dict[str, int] = {}

    def jail(self, count: int = 3) -> VmmJail:
        return VmmJail(
            uid_base=1000, uid_count=count, root=Path("/nonexistent"), cgroups=None,
            memory_overhead=64 * MiB, uids_in_records=lambda: set(self.records.values()),
            record_uid=self.records.__setitem__,
        )  # fmt: skip


def record(instance_id: str, uid: int | None = None) -> InstanceRecord:
    return InstanceRecord(id=instance_id, name=instance_id, image="i", image_digest="d",
                          memory_bytes=256 * MiB, overlay_bytes=MiB, vmm_uid=uid)  # fmt: skip


async def test_uids_are_distinct_recorded_and_given_back(tmp_path: Path) -> None:
    store = UidStore()
    jail = store.jail()
    layouts = {}
    for name in ("a", "b", "c"):
        layouts[name] = InstanceLayout(tmp_path / name, tmp_path / "run" / name)
        layouts[name].dir.mkdir()
        await jail.acquire(CreatePlan(record=record(name), network=None), layouts[name])
    assert store.records == {"a": 1000, "b": 1001, "c": 1002}
    assert oct(layouts["a"].dir.stat().st_mode & 0o777) == "0o700"
    with pytest.raises(Unavailable, match="no free VMM uid"):
        await jail.acquire(CreatePlan(record=record("d"), network=None), layouts["a"])
    # Delete: the record goes first, then the resource lets the uid go.
    del store.records["b"]
    await jail.release(record("b", 1001), layouts["b"])
    fork = CreatePlan(record=record("e", uid=1000), network=None)  # copied from its source
    await jail.acquire(fork, layouts["c"])
    assert fork.record.vmm_uid == 1001 and store.records["e"] == 1001


def test_oom_kill_is_the_exit_reason(tmp_path: Path) -> None:
    fake_v1(tmp_path, ("memory",))
    cgroups = detect_cgroups(tmp_path)
    store = UidStore()
    jail = VmmJail(uid_base=1000, uid_count=1, root=tmp_path / "root", cgroups=cgroups,
                   memory_overhead=64 * MiB, uids_in_records=lambda: set(),
                   record_uid=store.records.__setitem__)  # fmt: skip
    assert jail.exit_reason(record("a")) is None
    memory = tmp_path / "memory/ember-a"
    memory.mkdir(parents=True)
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    reason = jail.exit_reason(record("a")) or ""
    assert "killed by the kernel: it exceeded its memory limit" in reason
    assert "64" in reason and "256" in reason
