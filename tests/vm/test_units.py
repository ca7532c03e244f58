"""Fast checks of the guest/hypervisor pieces that need no VM."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from ember.errors import InvalidArgument, Unavailable
from ember.guest.client import AgentClient
from ember.guest.config import (
    GuestConfig,
    GuestNetwork,
    create_overlay_disk,
    read_exit_record,
    write_config_disk,
)
from ember.guest.protocol import Decoder, Frame, MsgType, encode, encode_record
from ember.hypervisor import DiskSpec, NicSpec, VMSpec, resolve_hypervisors
from ember.hypervisor.accel import detect_accel, host_tsc_khz
from ember.hypervisor.qemu import build_command
from ember.system.kernel import load_order
from ember.units import parse_size
from tests.conftest import unallocatable_memory


def test_frames_roundtrip_across_split_reads_and_garbage() -> None:
    frames = [Frame(MsgType.PING, 3, b"abc"), Frame(MsgType.STDIN, 7, b"", flags=1)]
    stream = b"\x00garbage" + b"".join(encode(f) for f in frames)
    decoder = Decoder()
    got = [f for i in range(len(stream)) for f in decoder.feed(stream[i : i + 1])]
    assert got == frames


def test_record_encoding_repeats_list_keys() -> None:
    assert encode_record({"arg": ["a", "b c"], "n": 5}) == b"arg=a\0arg=b c\0n=5\0"
    with pytest.raises(ValueError):
        encode_record({"arg": ["nul\0"]})


def test_config_disk_layout_and_exit_record(tmp_path: Path) -> None:
    disk = tmp_path / "config.img"
    config = GuestConfig(
        entrypoint=["/bin/app"],
        cmd=["--x"],
        env={"A": "1"},
        network=GuestNetwork(ip="10.0.0.2", prefix=24, gateway="10.0.0.1", dns=["1.1.1.1"]),
    )
    write_config_disk(disk, config)
    data = disk.read_bytes()
    assert len(data) % 4096 == 0 and data[:4096] == b"\0" * 4096
    records = data[4096:].rstrip(b"\0").split(b"\0")
    assert records[:3] == [b"arg=/bin/app", b"arg=--x", b"env=A=1"]
    assert b"net.ip=10.0.0.2" in records and b"net.dns=1.1.1.1" in records
    assert read_exit_record(disk) is None
    with disk.open("r+b") as f:
        f.write(b'{"exit_code":3,"signal":0,"message":"exited with code 3"}')
    record = read_exit_record(disk)
    assert record is not None and record.exit_code == 3


def test_config_rejects_bad_env_names(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        write_config_disk(tmp_path / "c", GuestConfig(env={"A=B": "x"}))


def test_module_load_order_puts_dependencies_first() -> None:
    dep = "k/virtio_blk.ko: k/virtio_ring.ko k/virtio.ko\nk/virtio_ring.ko:\nk/virtio.ko:\n"
    order = load_order(dep, ("virtio_blk", "ext4"), builtin={"ext4"})
    assert order == ["k/virtio_ring.ko", "k/virtio.ko", "k/virtio_blk.ko"]


def test_accel_detection(tmp_path: Path) -> None:
    assert detect_accel("tcg") == "tcg" and detect_accel("kvm") == "kvm"
    (tmp_path / "sys/module/kvm_pvm").mkdir(parents=True)
    assert detect_accel("auto", root=tmp_path) == "tcg"
    with pytest.raises(InvalidArgument):
        detect_accel("hvf")
    assert host_tsc_khz("processor : 0\ncpu MHz\t\t: 2445.404\n") == 2445404


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
        "serial_log": directory / "app.log",
        "agent_socket": directory / "agent.sock",
        "qmp_socket": directory / "qmp.sock",
        "pid_file": directory / "qemu.pid",
    }
    return VMSpec(**(defaults | fields))


def test_qemu_command_line(tmp_path: Path) -> None:
    spec = spec_in(
        tmp_path,
        vcpus=2,
        serial_log=tmp_path / "a,b.log",
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


def test_overlay_larger_than_the_filesystem_allows_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="overlay_size: 999TB"):
        create_overlay_disk(tmp_path / "overlay.ext4", parse_size("999TB", field="overlay_size"))
    assert list(tmp_path.iterdir()) == []


async def test_agent_exec_refusals_leave_no_session() -> None:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    client = AgentClient(reader, writer)
    client._synced.set()  # as if the agent had answered HELLO
    try:
        with pytest.raises(InvalidArgument, match="NUL"):
            await client.exec(["echo", "a\0b"])
        with pytest.raises(InvalidArgument, match="NUL"):
            await client.exec(["env"], env={"A": "x\0y"})
        with pytest.raises(TimeoutError):  # the agent never answers
            await client.exec(["true"], timeout=0.1)
        assert client._sessions == {}
    finally:
        await client.close()
        theirs.close()
