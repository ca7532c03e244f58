"""Exec through Ember's WebSocket API beside the raw guest agent channel, in one run.

- latency: `exec true`, 100 times, through the official client (a WebSocket per
  exec: connect, authenticate, run, exit code) and straight over the agent
  socket of a bare-QEMU VM of the same image;
- throughput: `cat` of a 100 MB file in the guest, through both paths.

    .venv/bin/python -m bench.exec [--runs 100] [--size-mb 100]
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
from hypeman import Hypeman
from hypeman.lib.exec import exec as hm_exec

from bench.common import WORKLOAD, bare_vm, push_hello
from ember.guest.client import AgentClient
from ember.testkit.ember_server import EmberServer


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ember_side(server: EmberServer, image: str, runs: int, size: int) -> tuple[list[float], float]:
    client = Hypeman(base_url=server.url, api_key=server.token(), max_retries=0)
    inst = client.instances.create(name="bench-exec", image=image, vcpus=1, size="512MB",
                                   cmd=WORKLOAD)  # fmt: skip
    try:
        client.instances.wait(inst.id, state="Running", api_timeout="120s")
        command = ["sh", "-c", f"head -c {size} /dev/urandom > /tmp/big"]
        hm_exec(client, inst.id, command, wait_for_agent=30)
        latencies = []
        for _ in range(runs):
            started = time.perf_counter()
            assert hm_exec(client, inst.id, ["true"]).exit_code == 0
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = hm_exec(client, inst.id, ["cat", "/tmp/big"])
        elapsed = time.perf_counter() - started
        assert len(result.output) == size
        return latencies, size / elapsed
    finally:
        client.instances.delete(inst.id)


async def raw_side(rootfs: Path, work: Path, runs: int, size: int) -> tuple[list[float], float]:
    async with bare_vm(rootfs, work) as (agent, _):
        await _drain(agent, ["sh", "-c", f"head -c {size} /dev/urandom > /tmp/big"])
        latencies = []
        for _ in range(runs):
            started = time.perf_counter()
            await _drain(agent, ["true"])
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        received = await _drain(agent, ["cat", "/tmp/big"])
        elapsed = time.perf_counter() - started
        assert received == size
        return latencies, size / elapsed


async def _drain(agent: AgentClient, argv: list[str]) -> int:
    """Run `argv` and count its output without keeping it (as a streaming consumer would)."""
    session = await agent.exec(argv)
    received = 0
    while (chunk := await session.read()) is not None:
        received += len(chunk[1])
    return received


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--size-mb", type=int, default=100)
    args = parser.parse_args()
    size = args.size_mb * 1024 * 1024
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    server = EmberServer(root / "data").start()
    try:
        http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.token()}"}
        )
        image, rootfs = push_hello(server, http)
        raw_lat, raw_rate = asyncio.run(raw_side(rootfs, root / "bare", args.runs, size))
        ember_lat, ember_rate = ember_side(server, image, args.runs, size)
        mib = 1024 * 1024
        print(
            f"exec true, raw agent channel: median {statistics.median(raw_lat) * 1000:.1f} ms, "
            f"p99 {percentile(raw_lat, 0.99) * 1000:.1f} ms ({args.runs} runs)"
        )
        print(
            f"exec true, ember WebSocket:   median {statistics.median(ember_lat) * 1000:.1f} ms, "
            f"p99 {percentile(ember_lat, 0.99) * 1000:.1f} ms ({args.runs} runs)"
        )
        print(f"cat {args.size_mb} MB, raw agent channel: {raw_rate / mib:.1f} MiB/s")
        print(f"cat {args.size_mb} MB, ember WebSocket:   {ember_rate / mib:.1f} MiB/s")
        print(f"throughput ratio ember/raw: {ember_rate / raw_rate:.2f}x (target >= 0.8x)")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
