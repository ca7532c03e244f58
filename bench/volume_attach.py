"""Volumes on a running VM: Ember's swappable slots beside the alternative, in one run.

- Ember: `POST /instances/{id}/volumes/{vol}` on a Running instance (the slot's backing
  node swapped, the guest told the new size, the agent's mount) and the `DELETE` (the
  agent's unmount, the slot emptied), each timed through the API.
- The alternative (issue 24): a short standby and restore with the new device set. Its
  floor is one API standby plus one restore of the same VM, timed here; it would still
  need the guest to probe a device it did not have at boot.
- What every VM pays for the slots: a bare-QEMU boot (Ember's command line, to the
  agent's READY) with and without the 8 empty slot disks.

    .venv/bin/python -m bench.volume_attach [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import WORKLOAD, bare_vm, push_hello
from ember.hypervisor import DiskSpec
from ember.testkit.ember_server import EmberServer
from ember.volumes.slots import SLOTS


def timed_post(http: httpx.Client, method: str, url: str, body: object = None) -> float:
    started = time.perf_counter()
    answer = http.request(method, url, json=body, timeout=300)
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"{method} {url}: {answer.status_code} {answer.text}")
    return elapsed


def running(http: httpx.Client, image: str) -> str:
    body = {"name": "vol-bench", "image": image, "vcpus": 1, "size": "256MB", "cmd": WORKLOAD}
    created = http.post("/instances", json=body)
    created.raise_for_status()
    instance: str = created.json()["id"]
    params = {"state": "Running", "timeout": "120s"}
    waited = http.get(f"/instances/{instance}/wait", params=params, timeout=130).json()
    assert waited["state"] == "Running", waited
    return instance


def ember_rounds(http: httpx.Client, image: str, runs: int) -> dict[str, list[float]]:
    instance = running(http, image)
    http.post("/volumes", json={"name": "bench-vol", "size_gb": 1}).raise_for_status()
    times: dict[str, list[float]] = {"attach": [], "detach": [], "standby+restore": []}
    url = f"/instances/{instance}/volumes/bench-vol"
    for _ in range(runs):
        times["attach"].append(timed_post(http, "POST", url, {"mount_path": "/data"}))
        times["detach"].append(timed_post(http, "DELETE", url))
    for _ in range(runs):
        standby = timed_post(http, "POST", f"/instances/{instance}/standby")
        time.sleep(1)  # the VMM exits after the answer; the restore would wait for it
        restore = timed_post(http, "POST", f"/instances/{instance}/restore")
        times["standby+restore"].append(standby + restore)
    http.delete(f"/instances/{instance}").raise_for_status()
    http.delete("/volumes/bench-vol").raise_for_status()
    return times


async def boot_rounds(rootfs: Path, root: Path, runs: int) -> dict[str, list[float]]:
    (root / "slots").mkdir()
    slots = tuple(DiskSpec(root / "slots" / f"{i}.empty", f"ember-vol-{i}", swappable=True)
                  for i in range(SLOTS))  # fmt: skip
    for disk in slots:
        disk.path.touch()
    times: dict[str, list[float]] = {"boot": [], f"boot + {SLOTS} slots": []}
    for _ in range(runs):
        for key, extra in (("boot", ()), (f"boot + {SLOTS} slots", slots)):
            async with bare_vm(rootfs, root / "bare", extra) as (_, booted):
                times[key].append(booted)
    return times


def show(name: str, values: list[float]) -> float:
    mid = statistics.median(values)
    print(f"  {name:22} median {mid:6.3f} s  ({', '.join(f'{v:.3f}' for v in values)})")
    return mid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    server = EmberServer(root / "data").start()
    try:
        headers = {"Authorization": f"Bearer {server.token()}"}
        http = httpx.Client(base_url=server.url, headers=headers, timeout=60)
        image, rootfs = push_hello(server, http)
        print("volume on a running VM (256 MB guest, TCG), through the API:")
        times = ember_rounds(http, image, args.runs)
        attach = show("attach (slot)", times["attach"])
        detach = show("detach (slot)", times["detach"])
        cycle = show("standby+restore", times["standby+restore"])
        print(f"  attach / standby+restore = {attach / cycle:.2f}x, "
              f"detach / standby+restore = {detach / cycle:.2f}x")  # fmt: skip
        print("what every boot pays for the slots (bare QEMU, to the agent's READY):")
        boots = asyncio.run(boot_rounds(rootfs, root, args.runs))
        plain = show("boot", boots["boot"])
        slotted = show(f"boot + {SLOTS} slots", boots[f"boot + {SLOTS} slots"])
        print(f"  with slots / without = {slotted / plain:.2f}x")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
