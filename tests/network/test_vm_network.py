"""A real VM on the network, all inside a namespace the test creates.

One QEMU microVM with a NIC on a plugged TAP: the host pings it, fetches over HTTP
from it, the guest resolves its own name through Ember's DNS on the gateway, and
the tc limits are measured with timed transfers in both directions.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TypedDict

import pytest

from ember.guest.config import GuestConfig, create_overlay_disk, write_config_disk
from ember.hypervisor.accel import detect_accel
from ember.hypervisor.base import DiskSpec, NicSpec, VMHandle, VMSpec
from ember.hypervisor.qemu import QemuHypervisor
from ember.network import Lease, NetworkManager
from ember.system import BootArtifacts, prepare
from ember.testkit.ember_server import SYSTEM_DIR
from ember.testkit.netns import in_netns, netns
from tests.network.conftest import make_manager

pytestmark = pytest.mark.vm
VM_ID = "v" + "9" * 23
RATE = 2_000_000  # bytes/s, both directions (well under what TCG moves here: 30+ MiB/s)
DOWNLOAD_BYTES = 6_000_000
BLOB_MB = 8
BOOT_TIMEOUT = 90
APPLETS = (
    "sh",
    "dd",
    "httpd",
    "nc",
    "nslookup",
    "echo",
    "sleep",
    "cat",
    "true",
    "ping",
    "grep",
    "printf",
)
GUEST_SCRIPT = f"""
dd if=/dev/zero of=/srv/blob bs=1M count={BLOB_MB} 2>/dev/null
echo hello-from-guest > /srv/hello
httpd -p 8080 -h /srv
nslookup vm.ember.internal
echo guest-ready
while true; do nc -l -p 5001 > /dev/null; done
"""


class ShapedResult(TypedDict):
    """What the first scenario brings back out of its namespace's child process."""

    ping: int
    ping_out: str
    hello: bytes
    download: float
    upload: float
    counters: tuple[int, int] | None
    serial: str
    ip: str


class IsolationResult(TypedDict):
    probe: str
    host_reaches_target: bool


@pytest.fixture(scope="module")
def artifacts() -> BootArtifacts:
    return prepare(SYSTEM_DIR)


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("netroot")
    root = base / "root"
    for d in ("bin", "etc", "srv", "tmp"):
        (root / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    image = base / "rootfs.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(image), str(root)], check=True)
    return image


def _timed_download(ip: str) -> float:
    """Host -> guest: send DOWNLOAD_BYTES, wait until the guest has them all (its EOF)."""
    chunk = b"\0" * 65536
    with socket.create_connection((ip, 5001), timeout=60) as conn:
        started = time.monotonic()
        sent = 0
        while sent < DOWNLOAD_BYTES:
            sent += conn.send(chunk[: DOWNLOAD_BYTES - sent])
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):  # nc exits once it has read everything: EOF
            pass
        return DOWNLOAD_BYTES / (time.monotonic() - started)


def _timed_upload(ip: str) -> float:
    """Guest -> host: an HTTP GET of the guest's blob."""
    started = time.monotonic()
    with urllib.request.urlopen(f"http://{ip}:8080/blob", timeout=60) as response:
        size = len(response.read())
    assert size == BLOB_MB << 20
    return size / (time.monotonic() - started)


async def _wait_for(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"{text!r} never appeared in the serial log"
        await asyncio.sleep(0.2)


async def _boot(
    hv: QemuHypervisor,
    work: Path,
    artifacts: BootArtifacts,
    rootfs: Path,
    manager: NetworkManager,
    lease: Lease,
    script: str,
) -> tuple[VMHandle, VMSpec]:
    """Start a VM running ``script`` with one NIC on the lease's (plugged) TAP."""
    work.mkdir(parents=True, exist_ok=True)
    overlay, config = work / "overlay.ext4", work / "config.img"
    create_overlay_disk(overlay, 128 << 20)
    guest = GuestConfig(
        entrypoint=["/bin/sh", "-c", script],
        hostname=lease.name,
        network=manager.guest_config(lease),
    )
    write_config_disk(config, guest)
    spec = VMSpec(
        instance_dir=work, kernel=artifacts.kernel, initrd=artifacts.initrd,
        cmdline=artifacts.cmdline, vcpus=1, memory_bytes=256 << 20,
        app_log=work / "app.log", agent_socket=work / "agent.sock",
        qmp_socket=work / "qmp.sock", pid_file=work / "qemu.pid",
        disks=[DiskSpec(rootfs, "ember-root", readonly=True),
               DiskSpec(overlay, "ember-overlay"), DiskSpec(config, "ember-config")],
        nics=[NicSpec(lease.tap, lease.mac)],
    )  # fmt: skip
    return await hv.start(spec), spec


async def _scenario(db: Path, work: Path, artifacts: BootArtifacts, rootfs: Path) -> ShapedResult:
    manager = make_manager(db, dns_upstream=[])
    manager.open()
    lease = manager.allocate(VM_ID, "vm", RATE, RATE)
    manager.plug(lease)
    dns = manager.dns_server()
    await dns.start()
    hv = QemuHypervisor(detect_accel("auto"))
    handle, spec = await _boot(hv, work, artifacts, rootfs, manager, lease, GUEST_SCRIPT)
    try:
        await _wait_for(spec.app_log, "guest-ready", BOOT_TIMEOUT)
        ping_cmd = ["busybox", "ping", "-c", "3", "-W", "5", lease.ip]
        ping = await asyncio.to_thread(subprocess.run, ping_cmd, capture_output=True, text=True)
        hello = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://{lease.ip}:8080/hello", timeout=30).read()
        )
        download = await asyncio.to_thread(_timed_download, lease.ip)
        upload = await asyncio.to_thread(_timed_upload, lease.ip)
        counters = manager.counters(VM_ID)
        return {
            "ping": ping.returncode,
            "ping_out": ping.stdout + ping.stderr,
            "hello": hello,
            "download": download,
            "upload": upload,
            "counters": counters,
            "serial": spec.app_log.read_text(errors="replace"),
            "ip": lease.ip,
        }
    finally:
        hv.kill(handle)
        await hv.wait_exit(handle, timeout=10)
        await dns.stop()
        manager.release(VM_ID)
        manager.uninstall()


def test_vm_is_reachable_resolves_its_name_and_is_shaped(
    ns: str, db: Path, tmp_path: Path, artifacts: BootArtifacts, rootfs: Path
) -> None:
    r = in_netns(ns, lambda: asyncio.run(_scenario(db, tmp_path, artifacts, rootfs)))
    print(f"download {r['download']:.0f} B/s, upload {r['upload']:.0f} B/s (limit {RATE})")
    assert r["ping"] == 0, r["ping_out"]
    assert r["hello"] == b"hello-from-guest\n"
    serial = r["serial"]
    # The guest's resolver is the gateway, where Ember's DNS answers the instance's name.
    assert f"Address: {r['ip']}" in serial.split("guest-ready")[0], serial[-2000:]
    # Shaped within 20% of the limit (shaping queues, so it does not fall far below).
    assert 0.8 * RATE <= r["download"] <= 1.2 * RATE
    assert 0.8 * RATE <= r["upload"] <= 1.2 * RATE
    assert r["counters"] is not None
    rx, tx = r["counters"]
    assert rx >= DOWNLOAD_BYTES and tx >= BLOB_MB << 20  # the guest's point of view


# A server in a second namespace ("the internet") that answers with the peer address
# it sees: behind Ember's masquerade, a guest appears as the host's address.
PEER_SERVER = """
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("198.51.100.2", 7000))
srv.listen()
while True:
    conn, peer = srv.accept()
    conn.recv(4096)
    body = ("peer=" + peer[0]).encode()
    conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
    conn.close()
"""
PROBE_SCRIPT = """
ping -c 2 -W 2 {other} >/dev/null 2>&1 && echo PING-OTHER-OK || echo PING-OTHER-FAIL
printf 'GET /hello HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {other} 8080 | grep -q hello-from-guest \\
    && echo HTTP-OTHER-OK || echo HTTP-OTHER-FAIL
ping -c 1 -W 5 {gateway} >/dev/null 2>&1 && echo PING-GW-OK || echo PING-GW-FAIL
echo "outside: $(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 198.51.100.2 7000 | grep peer=)"
echo probe-done
sleep 600
"""


async def _isolation_scenario(
    db: Path, work: Path, artifacts: BootArtifacts, rootfs: Path, outside: str
) -> IsolationResult:
    # The host namespace's uplink: a veth to the "outside" namespace.
    for command in (
        f"ip link add veth-up type veth peer name veth-out netns {outside}",
        "ip addr add 198.51.100.1/24 dev veth-up",
        "ip link set veth-up up",
        f"ip -n {outside} addr add 198.51.100.2/24 dev veth-out",
        f"ip -n {outside} link set veth-out up",
    ):
        subprocess.run(command.split(), check=True)
    server = subprocess.Popen(
        ["ip", "netns", "exec", outside, "/work/main/.venv/bin/python", "-c", PEER_SERVER]
    )
    manager = make_manager(db, dns_upstream=[])
    manager.open()
    hv = QemuHypervisor(detect_accel("auto"))
    target = manager.allocate("t" + "1" * 23, "target")
    probe = manager.allocate("p" + "2" * 23, "probe")
    handles: list[VMHandle] = []
    try:
        for lease in (target, probe):
            manager.plug(lease)
        handle, target_spec = await _boot(
            hv, work / "target", artifacts, rootfs, manager, target, GUEST_SCRIPT
        )
        handles.append(handle)
        await _wait_for(target_spec.app_log, "guest-ready", BOOT_TIMEOUT)
        script = PROBE_SCRIPT.format(other=target.ip, gateway=manager.settings.gateway_ip)
        handle, probe_spec = await _boot(
            hv, work / "probe", artifacts, rootfs, manager, probe, script
        )
        handles.append(handle)
        await _wait_for(probe_spec.app_log, "probe-done", BOOT_TIMEOUT)
        host_ping = subprocess.run(
            ["busybox", "ping", "-c", "1", "-W", "5", target.ip], capture_output=True
        )
        return {
            "probe": probe_spec.app_log.read_text(errors="replace"),
            "host_reaches_target": host_ping.returncode == 0,
        }
    finally:
        for handle in handles:
            hv.kill(handle)
            await hv.wait_exit(handle, timeout=10)
        server.kill()
        server.wait()
        manager.uninstall()


def test_guests_are_isolated_and_reach_out_through_nat(
    ns: str, db: Path, tmp_path: Path, artifacts: BootArtifacts, rootfs: Path
) -> None:
    with netns() as outside:
        r = in_netns(
            ns, lambda: asyncio.run(_isolation_scenario(db, tmp_path, artifacts, rootfs, outside))
        )
    probe = r["probe"]
    assert "PING-OTHER-FAIL" in probe and "HTTP-OTHER-FAIL" in probe, probe[-2000:]
    assert "PING-GW-OK" in probe, probe[-2000:]
    assert "outside: peer=198.51.100.1" in probe, probe[-2000:]  # masqueraded
    assert r["host_reaches_target"]
