"""Boot time: `POST /instances` -> Running, beside bare QEMU booting the same VM.

Ember's figure runs from the create request until the instance reads Running
(the guest agent reported the workload started). The baseline starts
`qemu-system-x86_64` by hand with the same kernel, initrd, disks and command
line, and waits for the same agent READY on the same socket protocol. Runs
alternate between the two so machine noise hits both alike. Also printed:
the create request alone (Ember's API overhead before the VMM runs).

    .venv/bin/python bench/boot.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from ember.guest.client import AgentClient
from ember.guest.config import GuestConfig, create_overlay_disk, write_config_disk
from ember.hypervisor import DiskSpec, VMSpec
from ember.hypervisor.accel import detect_accel
from ember.hypervisor.qemu import build_command
from ember.system import load
from ember.testkit import hello_image, push
from ember.testkit.ember_server import EmberServer

MEMORY, VCPUS = 256 * 1024 * 1024, 1
WORKLOAD = ["/hello", "serve", "8080"]


def ember_boot(http: httpx.Client, image: str, run: int) -> tuple[float, float]:
    started = time.perf_counter()
    created = http.post(
        "/instances",
        json={"name": f"bench-{run}", "image": image, "vcpus": VCPUS, "size": "256MB",
              "cmd": WORKLOAD},
    )  # fmt: skip
    if created.status_code != 201:
        raise RuntimeError(f"create failed: {created.status_code} {created.text}")
    api = time.perf_counter() - started
    waited = http.get(
        f"/instances/{created.json()['id']}/wait",
        params={"state": "Running", "timeout": "120s"}, timeout=130,
    ).json()  # fmt: skip
    total = time.perf_counter() - started
    if waited["state"] != "Running":
        raise RuntimeError(f"instance did not reach Running: {waited}")
    http.delete(f"/instances/{created.json()['id']}").raise_for_status()
    return total, api


async def bare_boot(rootfs: Path, work: Path) -> float:
    """Bare QEMU with the same boot artifacts; disks are prepared before the clock starts."""
    system = load(Path("/var/lib/ember/system"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    create_overlay_disk(work / "overlay.ext4", 10 * 1024**3)
    write_config_disk(work / "config.disk", GuestConfig(cmd=WORKLOAD))
    spec = VMSpec(
        instance_dir=work, kernel=system.kernel, initrd=system.initrd, cmdline=system.cmdline,
        vcpus=VCPUS, memory_bytes=MEMORY, serial_log=work / "app.log",
        agent_socket=work / "agent.sock", qmp_socket=work / "qmp.sock",
        pid_file=work / "qemu.pid", name="bare",
        disks=[DiskSpec(rootfs, "ember-root", readonly=True),
               DiskSpec(work / "overlay.ext4", "ember-overlay"),
               DiskSpec(work / "config.disk", "ember-config")],
    )  # fmt: skip
    command = build_command(spec, detect_accel("auto"))
    command.remove("-daemonize")
    started = time.perf_counter()
    qemu = subprocess.Popen(command, cwd=work)
    try:
        agent = await AgentClient.connect(work / "agent.sock", timeout=30)
        await agent.wait_ready(120)
        elapsed = time.perf_counter() - started
        await agent.close()
        return elapsed
    finally:
        qemu.kill()
        qemu.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    server = EmberServer(root / "data").start()
    try:
        headers = {"Authorization": f"Bearer {server.token()}"}
        http = httpx.Client(base_url=server.url, headers=headers, timeout=60)
        image_digest = push(hello_image(), server.url, "bench/hello", "v1", token=server.token())
        image = f"127.0.0.1:{server.port}/bench/hello:v1"
        while http.get(f"/images/{image.replace('/', '%2F')}").json()["status"] != "ready":
            time.sleep(0.05)
        rootfs = server.data_dir / "images" / image_digest / "rootfs.erofs"

        ember_totals, api_times, bare_times = [], [], []
        for run in range(args.runs):
            total, api = ember_boot(http, image, run)
            ember_totals.append(total)
            api_times.append(api)
            bare_times.append(asyncio.run(bare_boot(rootfs, root / "bare")))
            print(f"run {run + 1}: ember {total:.2f}s (create {api * 1000:.0f} ms), "
                  f"bare qemu {bare_times[-1]:.2f}s")  # fmt: skip

        ours, bare = statistics.median(ember_totals), statistics.median(bare_times)
        print(f"bare qemu -> agent READY:     {bare:.2f}s (median of {args.runs})")
        print(f"ember POST /instances -> Running: {ours:.2f}s (median of {args.runs})")
        print(f"ratio ember/bare:             {ours / bare:.2f}x (target <= 1.15x)")
        print(f"ember create request alone:   {statistics.median(api_times) * 1000:.0f} ms")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
