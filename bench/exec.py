"""Exec through Ember's WebSocket API beside the raw guest agent channel, in one run.

- latency: `exec true`, 100 times, through the official client (a WebSocket per
  exec: connect, authenticate, run, exit code) and straight over the agent
  socket of a bare-QEMU VM of the same image;
- throughput: `cat` of a 100 MB file in the guest, through both paths.

Both VMs are up at once and the two paths take turns (a raw run, then an Ember
run), so load from elsewhere on a shared machine falls on both alike; the
figures are medians.

    .venv/bin/python -m bench.exec [--runs 100] [--size-mb 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from hypeman import Hypeman
from hypeman.lib.exec import exec as hm_exec

from bench.common import WORKLOAD, bare_vm, bench_dir, push_hello
from ember.guest.client import AgentClient
from ember.testkit.ember_server import EmberServer, serving

MIB = 1024 * 1024


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _drain(agent: AgentClient, argv: list[str]) -> int:
    """Run `argv` and count its output without keeping it (as a streaming consumer would)."""
    session = await agent.exec(argv)
    received = 0
    while (chunk := await session.read()) is not None:
        received += len(chunk[1])
    return received


def _ember_exec(client: Hypeman, instance: str, argv: list[str]) -> int:
    result = hm_exec(client, instance, argv)
    assert result.exit_code == 0, result
    return len(result.output)


async def _timed(run: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    started = time.perf_counter()
    received = await run()
    return time.perf_counter() - started, received


async def measure(
    server: EmberServer, image: str, rootfs: Path, work: Path, args: argparse.Namespace
) -> None:
    size = args.size_mb * MIB
    client = Hypeman(base_url=server.url, api_key=server.token(), max_retries=0)
    inst = client.instances.create(name="bench-exec", image=image, vcpus=1, size="512MB",
                                   cmd=WORKLOAD)  # fmt: skip
    try:
        client.instances.wait(inst.id, state="Running", api_timeout="120s")
        async with bare_vm(rootfs, work) as (agent, _):
            make_file = ["sh", "-c", f"head -c {size} /dev/urandom > /tmp/big"]
            await _drain(agent, make_file)
            hm_exec(client, inst.id, make_file, wait_for_agent=30)

            def raw(argv: list[str]) -> Callable[[], Awaitable[int]]:
                return lambda: _drain(agent, argv)

            def ember(argv: list[str]) -> Callable[[], Awaitable[int]]:
                return lambda: asyncio.to_thread(_ember_exec, client, inst.id, argv)

            latency: dict[str, list[float]] = {"raw": [], "ember": []}
            for _ in range(args.runs):
                latency["raw"].append((await _timed(raw(["true"])))[0])
                latency["ember"].append((await _timed(ember(["true"])))[0])
            rate: dict[str, list[float]] = {"raw": [], "ember": []}
            for _ in range(args.rounds):
                for side, run in (("raw", raw), ("ember", ember)):
                    elapsed, received = await _timed(run(["cat", "/tmp/big"]))
                    assert received == size, (side, received)
                    rate[side].append(size / elapsed / MIB)
    finally:
        client.instances.delete(inst.id)
    report(latency, rate, args)


def report(
    latency: dict[str, list[float]], rate: dict[str, list[float]], args: argparse.Namespace
) -> None:
    for side, label in (("raw", "raw agent channel:"), ("ember", "ember WebSocket:  ")):
        ms = latency[side]
        print(
            f"exec true, {label} median {statistics.median(ms) * 1000:.1f} ms, "
            f"p99 {percentile(ms, 0.99) * 1000:.1f} ms ({args.runs} runs)"
        )
    for side, label in (("raw", "raw agent channel:"), ("ember", "ember WebSocket:  ")):
        runs = ", ".join(f"{r:.1f}" for r in rate[side])
        print(f"cat {args.size_mb} MB, {label} {statistics.median(rate[side]):.1f} MiB/s ({runs})")
    ratio = statistics.median(rate["ember"]) / statistics.median(rate["raw"])
    print(f"throughput ratio ember/raw: {ratio:.2f}x (target >= 0.8x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="cat runs per side")
    args = parser.parse_args()
    with bench_dir() as root, serving(root / "data") as server:
        http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.token()}"}
        )
        image, rootfs = push_hello(server, http)
        asyncio.run(measure(server, image, rootfs, root / "bare", args))


if __name__ == "__main__":
    main()
