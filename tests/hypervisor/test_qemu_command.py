"""Fast checks of the hypervisor layer: accelerator detection, backend resolution and
the QEMU command line. No VM boots here (QEMU is started once, and fails at once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ember.errors import InvalidArgument, Unavailable
from ember.hypervisor import DiskSpec, NicSpec, VMSpec, resolve_hypervisors
from ember.hypervisor.accel import (
    AccelChoice,
    choose_accel,
    detect_accel,
    host_tsc_khz,
    kvm_problem,
)
from ember.hypervisor.qemu import build_command
from ember.units import parse_size
from tests.conftest import unallocatable_memory


def test_accel_detection(tmp_path: Path) -> None:
    assert detect_accel("tcg") == "tcg" and detect_accel("kvm") == "kvm"
    (tmp_path / "sys/module/kvm_pvm").mkdir(parents=True)
    assert detect_accel("auto", root=tmp_path) == "tcg"
    with pytest.raises(InvalidArgument):
        detect_accel("hvf")
    assert host_tsc_khz("processor : 0\ncpu MHz\t\t: 2445.404\n") == 2445404


def test_accel_choice_says_why(tmp_path: Path) -> None:
    """One function decides and explains (served by /capabilities and `ember doctor`)."""
    assert choose_accel("tcg", root=tmp_path) == AccelChoice("tcg", "EMBER_ACCEL=tcg")
    assert choose_accel("auto", root=tmp_path).reason == "/dev/kvm does not exist"
    (tmp_path / "sys/module/kvm_pvm").mkdir(parents=True)
    choice = choose_accel("auto", root=tmp_path)
    assert choice.accel == "tcg" and "PVM" in choice.reason
    problem = kvm_problem(tmp_path)
    assert problem is not None and problem.why == choice.reason


def test_unavailable_hypervisors_are_refused_clearly() -> None:
    with pytest.raises(InvalidArgument, match="'firecracker' is not available on this host"):
        resolve_hypervisors("tcg").get("firecracker")
    hv = resolve_hypervisors("tcg").get("qemu")
    assert not hv.capabilities.hotplug_memory and hv.capabilities.disk_io_limit


def spec_in(directory: Path, **fields: Any) -> VMSpec:
    """A VMSpec with everything under `directory`; `fields` override."""
    defaults: dict[str, Any] = {
        "instance_dir": directory,
        "kernel": directory / "vmlinuz",
        "initrd": directory / "initrd.gz",
        "cmdline": "console=ttyS0",
        "vcpus": 1,
        "memory_bytes": 512 << 20,
        "app_log": directory / "app.log",
        "agent_socket": directory / "agent.sock",
        "qmp_socket": directory / "qmp.sock",
        "pid_file": directory / "qemu.pid",
    }
    return VMSpec(**(defaults | fields))


def test_qemu_command_line(tmp_path: Path) -> None:
    spec = spec_in(
        tmp_path,
        vcpus=2,
        app_log=tmp_path / "a,b.log",
        disks=[DiskSpec(tmp_path / "root", "ember-root", readonly=True, bps_limit=1000)],
        nics=[NicSpec("tap0", "02:00:00:00:00:01")],
    )
    cmd = build_command(spec, "kvm")
    joined = " ".join(cmd)
    assert "-accel kvm -cpu host" in joined and "-m 512M -smp 2" in joined
    assert "-no-reboot" in cmd and "-daemonize" in cmd
    assert f"path={tmp_path}/a,,b.log,append=on" in joined
    assert "readonly=on,throttling.bps-total=1000" in joined
    assert "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01" in joined
    assert cmd[cmd.index("-append") + 1] == "console=ttyS0"


async def test_qemu_start_failure_reports_qemu_own_words(tmp_path: Path) -> None:
    # A daemonized QEMU writes this error to its -D file, not to the pipe Ember reads.
    spec = spec_in(
        tmp_path,
        memory_bytes=parse_size(unallocatable_memory(), field="size"),
        vmm_log=tmp_path / "vmm.log",
    )
    (tmp_path / "qemu.out").write_text("left over from an earlier run\n")
    with pytest.raises(Unavailable, match=r"cannot set up guest memory.*Cannot allocate memory"):
        await resolve_hypervisors("tcg").get("qemu").start(spec)
    vmm = (tmp_path / "vmm.log").read_text()
    assert "Cannot allocate memory" in vmm and "left over from an earlier run" in vmm
    assert not (tmp_path / "qemu.out").exists()


def test_swappable_disks_are_named_nodes(tmp_path: Path) -> None:
    """A volume slot: the device's raw node over a named child `change_disk` replaces."""
    disks = [
        DiskSpec(tmp_path / "v,1.raw", "ember-vol-0", readonly=True, swappable=True),
        DiskSpec(tmp_path / "l.qcow2", "ember-vol-1", swappable=True, format="qcow2"),
    ]
    cmd = " ".join(build_command(spec_in(tmp_path, disks=disks), "tcg"))
    assert (
        "-blockdev driver=file,node-name=ember-vol-0-file,read-only=on,"
        f"filename={tmp_path}/v,,1.raw "
        "-blockdev driver=raw,node-name=ember-vol-0,file=ember-vol-0-file,read-only=on "
        "-device virtio-blk-device,drive=ember-vol-0,serial=ember-vol-0"
    ) in cmd
    assert (
        "-blockdev driver=qcow2,node-name=ember-vol-1-file,read-only=off,file.driver=file,"
        f"file.filename={tmp_path}/l.qcow2"
    ) in cmd
