"""Standby and restore: Ember's API beside bare QEMU doing the same save/restore by hand.

For a 256 MB and a 1 GB guest, in the same run:
- Ember: `POST /instances` -> Running (cold create), then rounds of
  `POST /standby` (pause, save: answered once the state is on disk) and, once
  its VMM has gone, `POST /restore` (-> Running); uncompressed, then zstd -1
  and lz4 (size once compressed, restore from it).
- bare QEMU: the same VM (Ember's own command line, same kernel, initrd and
  disks) booted by hand, then `stop` + `migrate` to the state being on disk
  (timed), `quit`, and a new QEMU with `-incoming defer` + `migrate-incoming` +
  `cont`, over raw QMP, by the same mechanism Ember used (RAM in a shared
  memory file with x-ignore-shared when Ember's VMM had one, the whole RAM
  streamed through `exec:cat` otherwise).

Both sides time standby to the same point (the saved state on disk) and
restore from the same point (no VMM left of the standby).

Targets (issue 12): standby and restore at most 1.2x bare QEMU; restore at
most 0.15x a cold create.

    .venv/bin/python -m bench.snapshots [--runs 3] [--sizes 256,1024]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.common import WORKLOAD, push_hello
from ember.config import Settings
from ember.guest.client import AgentClient
from ember.guest.config import GuestConfig, create_overlay_disk, write_config_disk
from ember.hypervisor import DiskSpec, VMSpec
from ember.hypervisor.accel import detect_accel
from ember.hypervisor.qemu import build_command
from ember.hypervisor.qmp import QMPClient
from ember.system import DEFAULT_SYSTEM_DIR, load
from ember.testkit.ember_server import EmberServer

MIB = 1 << 20


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---- Ember ---------------------------------------------------------------------------


class EmberRun:
    def __init__(self, http: httpx.Client, data_dir: Path, image: str, mib: int) -> None:
        self.http, self.data_dir, self.image, self.mib = http, data_dir, image, mib
        self.id = ""

    def create(self) -> float:
        started = time.perf_counter()
        body = {"name": f"snap-{self.mib}", "image": self.image, "vcpus": 1,
                "size": f"{self.mib}MB", "cmd": WORKLOAD}  # fmt: skip
        created = self.http.post("/instances", json=body)
        created.raise_for_status()
        self.id = created.json()["id"]
        waited = self.http.get(
            f"/instances/{self.id}/wait", params={"state": "Running", "timeout": "120s"},
            timeout=130,
        ).json()  # fmt: skip
        assert waited["state"] == "Running", waited
        return time.perf_counter() - started

    def post(self, action: str, body: dict[str, Any] | None = None) -> tuple[float, Any]:
        started = time.perf_counter()
        answer = self.http.post(f"/instances/{self.id}/{action}", json=body or {}, timeout=300)
        elapsed = time.perf_counter() - started
        if answer.status_code != 200:
            raise RuntimeError(f"{action}: {answer.status_code} {answer.text}")
        return elapsed, answer.json()

    @property
    def dir(self) -> Path:
        return self.data_dir / "instances" / self.id

    def memory_in_file(self) -> bool:
        log = (self.dir / "logs" / "vmm.log").read_text()
        return "memory-backend-file" in log

    def snapshot_bytes(self) -> int:
        """What the standby keeps on disk: state stream + allocated memory payload."""
        files = [p for p in (self.dir / "standby").iterdir() if p.is_file()]
        if (self.dir / "memory.ram").exists():
            files.append(self.dir / "memory.ram")
        return sum(p.stat().st_blocks * 512 for p in files)

    def wait_vmm_gone(self) -> None:
        """The standby's VMM has exited (its runtime dir goes with it)."""
        deadline = time.monotonic() + 30
        while (Settings().runtime_dir / self.id).exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the VMM did not exit after standby")
            time.sleep(0.01)

    def wait_compressed(self, suffix: str) -> int:
        deadline = time.monotonic() + 300
        standby = self.dir / "standby"
        while time.monotonic() < deadline:
            done = [p for p in standby.glob(f"*.{suffix}")]
            if done and not list(standby.glob("*.partial")):
                return done[0].stat().st_size
            time.sleep(0.05)
        raise RuntimeError("compression did not finish")

    def delete(self) -> None:
        self.http.delete(f"/instances/{self.id}").raise_for_status()


def api_round_trip(http: httpx.Client) -> float:
    """The fixed cost of any call through the API, for reading the ratios above."""
    times = []
    for _ in range(20):
        started = time.perf_counter()
        http.get("/health").raise_for_status()
        times.append(time.perf_counter() - started)
    return median(times)


# ---- bare QEMU -----------------------------------------------------------------------


async def bare_round(
    rootfs: Path, work: Path, mib: int, in_file: bool, runs: int
) -> dict[str, list[float]]:
    """Boot once, then `runs` rounds of save+quit / -incoming+cont over raw QMP."""
    system = load(DEFAULT_SYSTEM_DIR)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    create_overlay_disk(work / "overlay.ext4", 1 << 30)
    write_config_disk(work / "config.disk", GuestConfig(cmd=WORKLOAD))
    spec = VMSpec(
        instance_dir=work, kernel=system.kernel, initrd=system.initrd, cmdline=system.cmdline,
        vcpus=1, memory_bytes=mib * MIB, app_log=work / "app.log",
        agent_socket=work / "agent.sock", qmp_socket=work / "qmp.sock",
        pid_file=work / "qemu.pid", name="bare",
        disks=[DiskSpec(rootfs, "ember-root", readonly=True),
               DiskSpec(work / "overlay.ext4", "ember-overlay"),
               DiskSpec(work / "config.disk", "ember-config")],
        memory_file=work / "memory.ram" if in_file else None,
    )  # fmt: skip
    accel = detect_accel("auto")
    subprocess.run(build_command(spec, accel), cwd=work, check=True)
    agent = await AgentClient.connect(spec.agent_socket, timeout=30)
    await agent.wait_ready(120)
    await agent.close()
    await asyncio.sleep(2)  # as Ember's instance, which ran a moment before its standby
    state = work / "vmstate"
    caps = [{"capability": "x-ignore-shared", "state": in_file}]
    figures: dict[str, list[float]] = {"save": [], "restore": [], "bytes": []}
    try:
        for _ in range(runs):
            pid = int(spec.pid_file.read_text())
            started = time.perf_counter()
            async with await QMPClient.connect(spec.qmp_socket) as qmp:
                await qmp.execute("stop")
                await qmp.execute("migrate-set-capabilities", {"capabilities": caps})
                await qmp.execute("migrate-set-parameters", {"max-bandwidth": 100 << 30})
                await qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(state))}"})
                await _wait(qmp)
                figures["save"].append(time.perf_counter() - started)
                await qmp.execute("quit")
            await _gone(pid)
            kept = state.stat().st_blocks * 512
            if in_file:
                kept += (work / "memory.ram").stat().st_blocks * 512
            figures["bytes"].append(kept)
            spec.qmp_socket.unlink(missing_ok=True)
            started = time.perf_counter()
            subprocess.run(
                [*build_command(spec, accel), "-incoming", "defer"], cwd=work, check=True
            )
            async with await QMPClient.connect(spec.qmp_socket) as qmp:
                await qmp.execute("migrate-set-capabilities", {"capabilities": caps})
                await qmp.execute(
                    "migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(state))}"}
                )
                await _wait(qmp)
                await qmp.execute("cont")
            figures["restore"].append(time.perf_counter() - started)
            await asyncio.sleep(1)
    finally:
        subprocess.run(["pkill", "-F", str(spec.pid_file)], check=False)
        await asyncio.sleep(0.5)
        shutil.rmtree(work, ignore_errors=True)
    return figures


async def _wait(qmp: QMPClient) -> None:
    while (status := (await qmp.execute("query-migrate")).get("status")) != "completed":
        if status in ("failed", "cancelled"):
            raise RuntimeError(f"migration {status}")
        await asyncio.sleep(0.005)


async def _gone(pid: int) -> None:
    while Path(f"/proc/{pid}").exists():
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return
        await asyncio.sleep(0.005)


# ---- the run -------------------------------------------------------------------------


def bench_size(http: httpx.Client, server: EmberServer, image: str, rootfs: Path,
               root: Path, mib: int, runs: int) -> None:  # fmt: skip
    ember = EmberRun(http, server.data_dir, image, mib)
    cold = ember.create()
    time.sleep(2)
    in_file = ember.memory_in_file()
    standby, restore, kept = [], [], []
    for _ in range(runs):
        took, _answer = ember.post("standby")
        standby.append(took)
        ember.wait_vmm_gone()
        kept.append(ember.snapshot_bytes())
        took, _answer = ember.post("restore")
        restore.append(took)
        time.sleep(1)
    compressed: dict[str, tuple[int, float]] = {}
    for algorithm, suffix in (("zstd", "zst"), ("lz4", "lz4")):
        ember.post("standby", {"compression": {"enabled": True, "algorithm": algorithm}})
        size = ember.wait_compressed(suffix)
        took, _answer = ember.post("restore")
        compressed[algorithm] = (size, took)
        time.sleep(1)
    ember.delete()
    bare = asyncio.run(bare_round(rootfs, root / "bare", mib, in_file, runs))

    mechanism = "RAM in a shared file + x-ignore-shared" if in_file else "RAM streamed (exec:cat)"
    s, bs = median(standby), median(bare["save"])
    r, br = median(restore), median(bare["restore"])
    print(f"\n== {mib} MiB guest: {mechanism}; medians of {runs} ==")
    print(f"standby        ember {s * 1000:7.0f} ms   bare qemu {bs * 1000:7.0f} ms   "
          f"ratio {s / bs:.2f}x (target <= 1.2x)")  # fmt: skip
    print(f"restore        ember {r * 1000:7.0f} ms   bare qemu {br * 1000:7.0f} ms   "
          f"ratio {r / br:.2f}x (target <= 1.2x)")  # fmt: skip
    print(f"cold create -> Running {cold:.2f} s; restore/create {r / cold:.3f}x (target <= 0.15x)")
    print(
        f"an API round trip (GET /health) costs {api_round_trip(http) * 1000:.1f} ms of the above"
    )
    print(f"snapshot on disk ember {median(kept) / MIB:.1f} MiB, "
          f"bare qemu {median(bare['bytes']) / MIB:.1f} MiB")  # fmt: skip
    for algorithm, (size, took) in compressed.items():
        print(
            f"{algorithm:5} compressed {size / MIB:6.1f} MiB; restore from it {took * 1000:.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="256,1024", help="guest sizes in MiB")
    parser.add_argument(
        "--memory-file", choices=("always", "never"), default="always",
        help="guest RAM in a shared file (EMBER_GUEST_MEMORY_FILE) or streamed at standby",
    )  # fmt: skip
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    env = {"EMBER_GUEST_MEMORY_FILE": args.memory_file}
    server = EmberServer(root / "data", env=env).start()
    try:
        headers = {"Authorization": f"Bearer {server.token()}"}
        http = httpx.Client(base_url=server.url, headers=headers, timeout=60)
        image, rootfs = push_hello(server, http)
        for mib in (int(size) for size in args.sizes.split(",")):
            bench_size(http, server, image, rootfs, root, mib, args.runs)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
