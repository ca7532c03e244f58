"""What the benchmarks share: an Ember server with the test image, and a bare-QEMU VM."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx

from ember.guest.client import AgentClient
from ember.guest.config import GuestConfig, create_overlay_disk, write_config_disk
from ember.hypervisor import DiskSpec, VMSpec
from ember.hypervisor.accel import detect_accel
from ember.hypervisor.qemu import build_command
from ember.system import DEFAULT_SYSTEM_DIR, load
from ember.testkit import hello_image, push
from ember.testkit.ember_server import EmberServer

MEMORY = 512 * 1024 * 1024
WORKLOAD = ["/hello", "serve", "8080"]


@contextmanager
def bench_dir() -> Iterator[Path]:
    """A fresh directory under /tmp (short: sockets live in it), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def push_hello(server: EmberServer, http: httpx.Client) -> tuple[str, Path]:
    """Push the test image into the server; its name and its root disk, once ready."""
    digest = push(hello_image(), server.url, "bench/hello", "v1", token=server.token())
    image = f"127.0.0.1:{server.port}/bench/hello:v1"
    while http.get(f"/images/{image.replace('/', '%2F')}").json()["status"] != "ready":
        time.sleep(0.05)
    return image, server.data_dir / "images" / digest / "rootfs.erofs"


@asynccontextmanager
async def bare_vm(
    rootfs: Path, work: Path, extra_disks: tuple[DiskSpec, ...] = ()
) -> AsyncIterator[tuple[AgentClient, float]]:
    """Boot `rootfs` with bare QEMU (Ember's command line, no Ember): the agent and boot time.

    Disks are prepared before the clock starts; the time runs from starting QEMU to the
    agent's READY, the point Ember calls Running.
    """
    system = load(DEFAULT_SYSTEM_DIR)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    create_overlay_disk(work / "overlay.ext4", 10 * 1024**3)
    write_config_disk(work / "config.disk", GuestConfig(cmd=WORKLOAD))
    spec = VMSpec(
        instance_dir=work, kernel=system.kernel, initrd=system.initrd, cmdline=system.cmdline,
        vcpus=1, memory_bytes=MEMORY, app_log=work / "app.log",
        agent_socket=work / "agent.sock", qmp_socket=work / "qmp.sock",
        pid_file=work / "qemu.pid", name="bare",
        disks=[DiskSpec(rootfs, "ember-root", readonly=True),
               DiskSpec(work / "overlay.ext4", "ember-overlay"),
               DiskSpec(work / "config.disk", "ember-config"), *extra_disks],
    )  # fmt: skip
    command = build_command(spec, detect_accel("auto"))
    command.remove("-daemonize")
    started = time.perf_counter()
    qemu = subprocess.Popen(command, cwd=work)
    try:
        agent = await AgentClient.connect(work / "agent.sock", timeout=30)
        await agent.wait_ready(120)
        booted = time.perf_counter() - started
        try:
            yield agent, booted
        finally:
            await agent.close()
    finally:
        qemu.kill()
        qemu.wait()
        shutil.rmtree(work, ignore_errors=True)
