"""Boot time: `POST /instances` -> Running, beside bare QEMU booting the same VM.

Ember's figure runs from the create request until the instance reads Running
(the guest agent reported the workload started). The baseline starts
`qemu-system-x86_64` by hand with the same kernel, initrd, disks and command
line, and waits for the same agent READY on the same socket protocol. Runs
alternate between the two so machine noise hits both alike. Also printed:
the create request alone (Ember's API overhead before the VMM runs).

    .venv/bin/python -m bench.boot [--runs 5] [--jail-compare]

`--jail-compare` adds a second server with EMBER_JAIL=off, booting in turn with
the jailed one, and prints the jail's cost as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.common import WORKLOAD, bare_vm, bench_dir, push_hello
from ember.testkit.ember_server import EmberServer, serving

VCPUS = 1


def ember_boot(http: httpx.Client, image: str, run: int) -> tuple[float, float]:
    started = time.perf_counter()
    created = http.post(
        "/instances",
        json={"name": f"bench-{run}", "image": image, "vcpus": VCPUS, "size": "512MB",
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
    async with bare_vm(rootfs, work) as (_, booted):
        return booted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--jail-compare", action="store_true",
        help="also boot on a second server with EMBER_JAIL=off, alternating with the jailed one",
    )  # fmt: skip
    args = parser.parse_args()
    with bench_dir() as root, ExitStack() as servers:
        server = servers.enter_context(serving(root / "data"))
        http = client_of(server)
        image, rootfs = push_hello(server, http)
        unjailed: tuple[httpx.Client, str] | None = None
        if args.jail_compare:
            second = servers.enter_context(serving(root / "unjailed", env={"EMBER_JAIL": "off"}))
            other = client_of(second)
            unjailed = (other, push_hello(second, other)[0])

        ember_totals, api_times, bare_times, free_totals = [], [], [], []
        for run in range(args.runs):
            total, api = ember_boot(http, image, run)
            ember_totals.append(total)
            api_times.append(api)
            if unjailed is not None:
                free_totals.append(ember_boot(*unjailed, run)[0])
            bare_times.append(asyncio.run(bare_boot(rootfs, root / "bare")))
            off = f", EMBER_JAIL=off {free_totals[-1]:.2f}s" if free_totals else ""
            print(f"run {run + 1}: ember {total:.2f}s (create {api * 1000:.0f} ms){off}, "
                  f"bare qemu {bare_times[-1]:.2f}s")  # fmt: skip

        ours, bare = statistics.median(ember_totals), statistics.median(bare_times)
        print(f"bare qemu -> agent READY:     {bare:.2f}s (median of {args.runs})")
        print(f"ember POST /instances -> Running: {ours:.2f}s (median of {args.runs})")
        print(f"ratio ember/bare:             {ours / bare:.2f}x (target <= 1.15x)")
        print(f"ember create request alone:   {statistics.median(api_times) * 1000:.0f} ms")
        if free_totals:
            free = statistics.median(free_totals)
            print(f"ember with EMBER_JAIL=off:    {free:.2f}s; jail cost {ours / free:.3f}x "
                  "(target <= 1.05x)")  # fmt: skip


def client_of(server: EmberServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.token()}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


if __name__ == "__main__":
    main()
