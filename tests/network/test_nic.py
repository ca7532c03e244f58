"""QEMU's NIC arguments: one tap netdev + virtio-net-device per NicSpec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ember.hypervisor.base import NicSpec, VMSpec
from ember.hypervisor.qemu import build_command, vhost_net_usable


def spec(directory: Path, **fields: Any) -> VMSpec:
    base: dict[str, Any] = {
        "instance_dir": directory,
        "kernel": directory / "vmlinuz",
        "initrd": directory / "initrd",
        "cmdline": "console=ttyS0",
        "vcpus": 1,
        "memory_bytes": 256 << 20,
        "app_log": directory / "app.log",
        "agent_socket": directory / "agent.sock",
        "qmp_socket": directory / "qmp.sock",
        "pid_file": directory / "qemu.pid",
    }
    return VMSpec(**(base | fields))


def test_nics_become_tap_netdevs(tmp_path: Path) -> None:
    nics = [NicSpec("tap-a", "02:00:00:00:00:01"), NicSpec("tap-b", "02:00:00:00:00:02")]
    cmd = build_command(spec(tmp_path, nics=nics), "tcg")
    netdevs = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-netdev"]
    devices = [cmd[i + 1] for i, arg in enumerate(cmd) if arg.startswith("-device")]
    vhost = ",vhost=on" if vhost_net_usable() else ""
    assert netdevs == [
        f"tap,id=net0,ifname=tap-a,script=no,downscript=no{vhost}",
        f"tap,id=net1,ifname=tap-b,script=no,downscript=no{vhost}",
    ]
    assert "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01" in devices
    assert "virtio-net-device,netdev=net1,mac=02:00:00:00:00:02" in devices


def test_no_nic_means_no_network_device(tmp_path: Path) -> None:
    cmd = build_command(spec(tmp_path), "tcg")
    assert "-netdev" not in cmd and not any("virtio-net" in arg for arg in cmd)


def test_vhost_only_with_dev_vhost_net(tmp_path: Path) -> None:
    # These hosts have no /dev/vhost-net, where QEMU 7.2 aborts on vhost=on.
    cmd = " ".join(build_command(spec(tmp_path, nics=[NicSpec("t", "02:00:00:00:00:03")]), "tcg"))
    assert ("vhost=on" in cmd) == Path("/dev/vhost-net").exists()
