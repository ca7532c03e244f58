"""Volumes: from-archive time beside doing it by hand, and disk throughput from the guest.

1. `POST /volumes/from-archive` of a tar.gz holding ~100 MB of files (a mix of
   compressible text and random bytes, nested directories), timed from the request
   to the answer, beside the same work by hand in the same run: `tar -xzf` into a
   directory, then `mkfs.ext4 -d` into a sparse disk of the same size with the same
   options. Runs alternate so machine noise hits both alike. Target: <= 1.2x.
2. Sequential write and read throughput with direct I/O (`dd oflag=direct` /
   `iflag=direct`, 1 MiB blocks) from inside a guest on a volume disk and on the
   instance's overlay disk, beside `dd` on a host file directly, same run. The
   guest is booted straight through QEMU with the disks `VolumeManager.plan_disks`
   gives (the instance core attaches volumes the same way); `--skip-guest` leaves
   this part out.

    .venv/bin/python -m bench.volumes [--runs 3] [--mb 100] [--skip-guest]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
from ember.hypervisor.qemu import QemuHypervisor
from ember.store import Store
from ember.system import DEFAULT_SYSTEM_DIR, load
from ember.testkit.ember_server import EmberServer
from ember.volumes import VolumeManager

SIZE_GB = 1
DD_MB = 128
MKFS_OPTIONS = ["-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"]


def make_tree(root: Path, total_mb: int) -> None:
    """~total_mb of files: half text (compresses), half random (does not), nested."""
    rng = os.urandom
    text = b"".join(b"line %d of a fairly ordinary text file\n" % i for i in range(8000))
    written, index = 0, 0
    while written < total_mb << 20:
        folder = root / f"d{index % 10}" / f"s{index % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        data = text[:200_000] if index % 2 else rng(200_000)
        (folder / f"f{index}.bin").write_bytes(data)
        written += len(data)
        index += 1


def by_hand(archive: Path, work: Path) -> float:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    started = time.perf_counter()
    (work / "tree").mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(work / "tree")], check=True)
    with (work / "disk.raw").open("wb") as f:
        f.truncate(SIZE_GB << 30)
    subprocess.run(["mkfs.ext4", *MKFS_OPTIONS, "-d", str(work / "tree"), str(work / "disk.raw")],
                   check=True)  # fmt: skip
    elapsed = time.perf_counter() - started
    shutil.rmtree(work)
    return elapsed


def through_ember(http: httpx.Client, archive: Path, run: int) -> float:
    data = archive.read_bytes()  # read before the clock starts, as tar reads a warm file
    started = time.perf_counter()
    answer = http.post(
        "/volumes/from-archive", params={"name": f"bench-{run}", "size_gb": SIZE_GB}, content=data
    )
    elapsed = time.perf_counter() - started
    if answer.status_code != 201:
        raise RuntimeError(f"from-archive failed: {answer.status_code} {answer.text}")
    http.delete(f"/volumes/{answer.json()['id']}").raise_for_status()
    return elapsed


def bench_archive(root: Path, runs: int, total_mb: int) -> None:
    make_tree(root / "src", total_mb)
    archive = root / "content.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(root / "src"), "."], check=True)
    print(f"archive: {archive.stat().st_size / 2**20:.1f} MiB gzip of {total_mb} MB of files")
    server = EmberServer(root / "data").start()
    try:
        headers = {"Authorization": f"Bearer {server.token()}"}
        http = httpx.Client(base_url=server.url, headers=headers, timeout=300)
        through_ember(http, archive, -1)  # warm-up: measures the size's budget once
        ours, theirs = [], []
        for run in range(runs):
            ours.append(through_ember(http, archive, run))
            theirs.append(by_hand(archive, root / "hand"))
            print(
                f"run {run + 1}: ember {ours[-1]:.2f}s, tar -xzf + mkfs.ext4 -d {theirs[-1]:.2f}s"
            )
    finally:
        server.stop()
    mine, hand = statistics.median(ours), statistics.median(theirs)
    print(f"tar -xzf + mkfs.ext4 -d by hand: {hand:.2f}s (median of {runs})")
    print(f"ember POST /volumes/from-archive: {mine:.2f}s (median of {runs})")
    print(f"ratio ember/by hand:             {mine / hand:.2f}x (target <= 1.2x)")


def dd_commands(path: str) -> tuple[str, str]:
    """Write then read DD_MB MiB with direct I/O (busybox and GNU dd alike)."""
    return (
        f"dd if=/dev/zero of={path}/dd.bin bs=1M count={DD_MB} oflag=direct",
        f"dd if={path}/dd.bin of=/dev/null bs=1M iflag=direct",
    )


async def timed(agent: AgentClient, command: str) -> float:
    """MiB/s of one dd in the guest, timed on the host (busybox dd reports no rate);
    an exec's own start costs milliseconds against seconds of I/O."""
    started = time.perf_counter()
    session = await agent.exec(["/bin/sh", "-c", command])
    result, _, err = await session.wait()
    elapsed = time.perf_counter() - started
    if result.exit_code != 0:
        raise RuntimeError(f"{command!r} failed: {err.decode(errors='replace')}")
    return DD_MB / elapsed


async def guest_dd(root: Path) -> dict[str, tuple[float, float]]:
    """Write/read MiB/s in a guest: on a volume at /vol and on the overlay root at /scratch."""
    system = load(DEFAULT_SYSTEM_DIR)
    store = Store(root / "vm.db")
    volumes = VolumeManager(store, root / "vmdata")
    await volumes.create("bench", SIZE_GB)
    volumes.attach("bench", "bench-vm", "bench-vm", "/vol")
    work = root / "vm"
    work.mkdir()
    attached = volumes.attachments_of("bench-vm")
    rootfs = _busybox_rootfs(root / "rootfs")
    create_overlay_disk(work / "overlay.ext4", 2 << 30)
    write_config_disk(work / "config.disk", GuestConfig(
        cmd=["/bin/sh", "-c", "mkdir -p /scratch; sleep 3600"],
        volumes=volumes.guest_mounts(attached),
    ))  # fmt: skip
    spec = VMSpec(
        instance_dir=work, kernel=system.kernel, initrd=system.initrd, cmdline=system.cmdline,
        vcpus=1, memory_bytes=512 << 20, app_log=work / "app.log",
        agent_socket=work / "agent.sock", qmp_socket=work / "qmp.sock",
        pid_file=work / "qemu.pid", name="bench-volumes",
        disks=[DiskSpec(rootfs, "ember-root", readonly=True),
               DiskSpec(work / "overlay.ext4", "ember-overlay"),
               DiskSpec(work / "config.disk", "ember-config"),
               *volumes.plan_disks(attached, work)],
    )  # fmt: skip
    hv = QemuHypervisor(detect_accel("auto"))
    handle = await hv.start(spec)
    results: dict[str, tuple[float, float]] = {}
    try:
        async with await AgentClient.connect(work / "agent.sock", timeout=60) as agent:
            await agent.wait_ready(180)
            for label, path in (("volume", "/vol"), ("overlay disk", "/scratch")):
                write, read = dd_commands(path)
                results[label] = (await timed(agent, write), await timed(agent, read))
    finally:
        hv.kill(handle)
        store.close()
    return results


def _busybox_rootfs(base: Path) -> Path:
    tree = base / "root"
    (tree / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", tree / "bin" / "busybox")
    for applet in ("sh", "dd", "mkdir", "sleep", "cat"):
        (tree / "bin" / applet).symlink_to("busybox")
    image = base / "rootfs.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(image), str(tree)], check=True)
    return image


def host_dd(root: Path) -> tuple[float, float]:
    rates = []
    for command in dd_commands(str(root)):
        started = time.perf_counter()
        subprocess.run(["sh", "-c", command], capture_output=True, check=True)
        rates.append(DD_MB / (time.perf_counter() - started))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--skip-guest", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/var/tmp"))
    try:
        bench_archive(root, args.runs, args.mb)
        if not args.skip_guest:
            guest = asyncio.run(guest_dd(root))
            host = host_dd(root)
            print(f"sequential direct I/O, {DD_MB} MiB, 1 MiB blocks (write / read MiB/s):")
            for label, (write, read) in [*guest.items(), ("host file", host)]:
                print(f"  {label:13} {write:8.1f} / {read:8.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
