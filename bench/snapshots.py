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
  streamed to a descriptor otherwise).
- with `--jail-compare`: the same Ember rounds on a second server with
  EMBER_JAIL=off, alternating with the jailed one, and the jail's cost as a ratio.

Both sides time standby to the same point (the saved state on disk) and
restore from the same point (no VMM left of the standby).

Targets (issue 12): standby and restore at most 1.2x bare QEMU; restore at
most 0.15x a cold create.

    .venv/bin/python -m bench.snapshots [--runs 3] [--sizes 256,1024] [--jail-compare]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import WORKLOAD, bench_dir, push_hello
from ember.config import Settings
from ember.guest.client import AgentClient
from ember.guest.config import GuestConfig, create_overlay_disk, write_config_disk
from ember.hypervisor import DiskSpec, VMSpec
from ember.hypervisor.accel import detect_accel
from ember.hypervisor.qemu import build_command
from ember.hypervisor.qmp import QMPClient
from ember.system import DEFAULT_SYSTEM_DIR, load
from ember.testkit.ember_server import EmberServer, serving

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
                await qmp.execute("migrate", {"uri": await _fd_uri(qmp, state, write=True)})
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
                uri = await _fd_uri(qmp, state, write=False)
                await qmp.execute("migrate-incoming", {"uri": uri})
                await _wait(qmp)
                await qmp.execute("cont")
            figures["restore"].append(time.perf_counter() - started)
            await asyncio.sleep(1)
    finally:
        subprocess.run(["pkill", "-F", str(spec.pid_file)], check=False)
        await asyncio.sleep(0.5)
        shutil.rmtree(work, ignore_errors=True)
    return figures


async def _fd_uri(qmp: QMPClient, path: Path, *, write: bool) -> str:
    """The stream through a descriptor opened here, as Ember does (see qemu.py)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC if write else os.O_RDONLY
    fd = os.open(path, flags, 0o600)
    try:
        await qmp.execute_with_fd("getfd", {"fdname": "bench"}, fd)
    finally:
        os.close(fd)
    return "fd:bench"


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


@dataclass
class EmberFigures:
    cold: float = 0.0
    standby: list[float] = field(default_factory=list)
    restore: list[float] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)


def ember_round(ember: EmberRun, figures: EmberFigures) -> None:
    """One standby (to the state on disk, its VMM gone) and one restore (to Running)."""
    took, _answer = ember.post("standby")
    figures.standby.append(took)
    ember.wait_vmm_gone()
    figures.kept.append(ember.snapshot_bytes())
    took, _answer = ember.post("restore")
    figures.restore.append(took)
    time.sleep(1)


def bench_size(http: httpx.Client, server: EmberServer, image: str, rootfs: Path, root: Path,
               mib: int, runs: int, unjailed: UnjailedServer | None) -> None:  # fmt: skip
    ember = EmberRun(http, server.data_dir, image, mib)
    mine = EmberFigures(cold=ember.create())
    other = None
    if unjailed is not None:  # the same rounds without the jail, alternating with these
        other = EmberRun(unjailed.http, unjailed.server.data_dir, unjailed.image, mib)
        theirs = EmberFigures(cold=other.create())
    time.sleep(2)
    in_file = ember.memory_in_file()
    for _ in range(runs):
        ember_round(ember, mine)
        if other is not None:
            ember_round(other, theirs)
    compressed: dict[str, tuple[int, float]] = {}
    for algorithm, suffix in (("zstd", "zst"), ("lz4", "lz4")):
        ember.post("standby", {"compression": {"enabled": True, "algorithm": algorithm}})
        size = ember.wait_compressed(suffix)
        took, _answer = ember.post("restore")
        compressed[algorithm] = (size, took)
        time.sleep(1)
    ember.delete()
    if other is not None:
        other.delete()
    bare = asyncio.run(bare_round(rootfs, root / "bare", mib, in_file, runs))

    mechanism = "RAM in a shared file + x-ignore-shared" if in_file else "RAM streamed (fd)"
    s, bs = median(mine.standby), median(bare["save"])
    r, br = median(mine.restore), median(bare["restore"])
    cold = mine.cold
    print(f"\n== {mib} MiB guest: {mechanism}; medians of {runs} ==")
    print(f"standby        ember {s * 1000:7.0f} ms   bare qemu {bs * 1000:7.0f} ms   "
          f"ratio {s / bs:.2f}x (target <= 1.2x)")  # fmt: skip
    print(f"restore        ember {r * 1000:7.0f} ms   bare qemu {br * 1000:7.0f} ms   "
          f"ratio {r / br:.2f}x (target <= 1.2x)")  # fmt: skip
    print(f"cold create -> Running {cold:.2f} s; restore/create {r / cold:.3f}x (target <= 0.15x)")
    print(
        f"an API round trip (GET /health) costs {api_round_trip(http) * 1000:.1f} ms of the above"
    )
    print(f"snapshot on disk ember {median(mine.kept) / MIB:.1f} MiB, "
          f"bare qemu {median(bare['bytes']) / MIB:.1f} MiB")  # fmt: skip
    for algorithm, (size, took) in compressed.items():
        print(
            f"{algorithm:5} compressed {size / MIB:6.1f} MiB; restore from it {took * 1000:.0f} ms"
        )
    if other is not None:
        for what, jailed, free in (("standby", s, median(theirs.standby)),
                                   ("restore", r, median(theirs.restore))):  # fmt: skip
            print(f"{what:8} jailed {jailed * 1000:7.0f} ms   EMBER_JAIL=off {free * 1000:7.0f} ms"
                  f"   ratio {jailed / free:.3f}x (target <= 1.05x)")  # fmt: skip


@dataclass
class UnjailedServer:
    server: EmberServer
    http: httpx.Client
    image: str


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="256,1024", help="guest sizes in MiB")
    parser.add_argument(
        "--memory-file", choices=("always", "never"), default="always",
        help="guest RAM in a shared file (EMBER_GUEST_MEMORY_FILE) or streamed at standby",
    )  # fmt: skip
    parser.add_argument(
        "--jail-compare", action="store_true",
        help="also time the same rounds on a server with EMBER_JAIL=off",
    )  # fmt: skip
    args = parser.parse_args()
    env = {"EMBER_GUEST_MEMORY_FILE": args.memory_file}
    with bench_dir() as root, ExitStack() as servers:
        server = servers.enter_context(serving(root / "data", env=env))
        http = client_of(server)
        image, rootfs = push_hello(server, http)
        unjailed = None
        if args.jail_compare:
            off = {**env, "EMBER_JAIL": "off"}
            second = servers.enter_context(serving(root / "unjailed", env=off))
            other = client_of(second)
            unjailed = UnjailedServer(second, other, push_hello(second, other)[0])
        for mib in (int(size) for size in args.sizes.split(",")):
            bench_size(http, server, image, rootfs, root, mib, args.runs, unjailed)


def client_of(server: EmberServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.token()}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


if __name__ == "__main__":
    main()
