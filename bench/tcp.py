"""Service groups' TCP path: throughput through Ember's TCP proxy vs straight to the
same server, in the same run, alternating rounds. Two parts:

- guest: a real `ember serve` in a network namespace, a group with a plain TCP service
  (host port 9000 -> guest 7000) and one instance whose busybox `nc -ll -e` swallows
  what it gets; a bulk send of `--mib` MiB (until the guest has read it all and
  closed) to the guest's address directly vs to the group's host port. What a client
  of a group sees.
- loopback: the proxy alone (`L4Proxy`, as the manager runs it) in front of an iperf3
  server on loopback vs iperf3 straight to it: Python's cost per byte where the far
  end is not the bottleneck (a TCG guest is).

Target: >= 0.8x.

    .venv/bin/python -m bench.tcp [--rounds 4] [--mib 64] [--seconds 3] [--streams 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

from bench.ingress import api
from ember.groups.l4 import L4Proxy, Listener
from ember.ingress.termination import Terminator
from ember.testkit import push
from ember.testkit.ember_server import EmberServer
from ember.testkit.image import build_image, busybox_layer
from ember.testkit.netns import in_netns, netns

HOST = "127.0.0.1"
MIB = 1024 * 1024
GROUP_PORT, GUEST_PORT = 9000, 7000
SINK = ["nc", "-ll", "-p", str(GUEST_PORT), "-e", "sh", "-c", "cat > /dev/null"]


def set_up(server: EmberServer) -> str:
    """(In the namespace.) The sink image, the TCP group and its instance: its address."""
    push(build_image([busybox_layer()], cmd=SINK), server.url, "bench/sink", "v1",
         token=server.token())  # fmt: skip
    image = f"127.0.0.1:{server.port}/bench/sink:v1"
    with api(server) as http:
        while http.get(f"/images/{image.replace('/', '%2F')}").json()["status"] != "ready":
            time.sleep(0.05)
        service = {"port": GROUP_PORT, "destination_port": GUEST_PORT, "handlers": []}
        http.post("/service-groups", json={"name": "tcp", "services": [service]}).raise_for_status()
        body = {"name": "sink", "image": image, "vcpus": 1, "size": "256MB",
                "service_group": {"name": "tcp"}}  # fmt: skip
        http.post("/instances", json=body).raise_for_status()
        http.get("/instances/sink/wait", params={"state": "Running", "timeout": "120s"},
                 timeout=130).raise_for_status()  # fmt: skip
        ip: str = http.get("/instances/sink").json()["network"]["ip"]
    return ip


def send(address: tuple[str, int], size: int) -> float:
    """(In the namespace.) Seconds to move `size` bytes to the sink, until it closed
    (it read everything); a refused connection (nc not yet listening) is tried again."""
    chunk = b"\0" * MIB
    for _ in range(100):
        try:
            with socket.create_connection(address, timeout=120) as sock:
                started = time.perf_counter()
                for _ in range(size // MIB):
                    sock.sendall(chunk)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
                return time.perf_counter() - started
        except ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing took the bytes at {address}")


def run_guest(rounds: int, mib: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    with netns() as ns:
        server = EmberServer(root / "data", netns=ns)
        try:
            server.start()
            ip = in_netns(ns, set_up, server)
            times: dict[str, list[float]] = {"direct": [], "group": []}
            targets = {"direct": (ip, GUEST_PORT), "group": (HOST, GROUP_PORT)}
            in_netns(ns, send, targets["group"], MIB)  # warm: the guest's first connection
            for index in range(rounds):
                for kind in ("direct", "group") if index % 2 == 0 else ("group", "direct"):
                    times[kind].append(in_netns(ns, send, targets[kind], mib * MIB))
        finally:
            server.clean_up()
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
    rates = {kind: [mib * 8 / 1000 / t for t in values] for kind, values in times.items()}
    print(f"guest ({mib} MiB per send, {rounds} rounds alternating, 1 vCPU TCG guest):")
    for kind, label in (("direct", "straight to the guest"), ("group", "through the group")):
        each = ", ".join(f"{x:.3f}" for x in rates[kind])
        print(f"  {label:24}{statistics.median(rates[kind]):8.3f} Gbit/s  ({each})")
    pairs = [g / d for d, g in zip(rates["direct"], rates["group"], strict=True)]
    ratio = statistics.median(rates["group"]) / statistics.median(rates["direct"])
    print(f"  ratio group/direct: {ratio:.2f}x of medians, {statistics.median(pairs):.2f}x "
          "median of per-pair ratios (target >= 0.8x)")  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def iperf(port: int, seconds: float, streams: int) -> float:
    """Received Gbit/s of one iperf3 run against `port`."""
    proc = await asyncio.create_subprocess_exec(
        "iperf3", "-c", HOST, "-p", str(port), "-t", str(seconds), "-P", str(streams), "-J",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"iperf3 failed: {out.decode()[-500:]}")
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


async def until_listening(port: int) -> None:
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError(f"iperf3 -s did not listen on {port}")


async def run_loopback(rounds: int, seconds: float, streams: int) -> None:
    target, front = free_port(), free_port()
    server = await asyncio.create_subprocess_exec(
        "iperf3",
        "-s",
        "-B",
        HOST,
        "-p",
        str(target),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def place(group_id: str, port: int) -> str:
        return f"{HOST}:{target}"

    plain_only = Terminator(Path("/nonexistent"), list)  # no TLS service here
    proxy = L4Proxy(HOST, place, plain_only.context)
    try:
        await until_listening(target)
        await proxy.sync({front: Listener("bench")})
        direct: list[float] = []
        proxied: list[float] = []
        for index in range(rounds):
            order = [(direct, target), (proxied, front)]
            for figures, port in order if index % 2 == 0 else order[::-1]:
                figures.append(await iperf(port, seconds, streams))
                await asyncio.sleep(1)  # iperf3 -s takes a moment between tests
        ratios = [p / d for p, d in zip(proxied, direct, strict=True)]
        print(f"loopback (iperf3 {seconds}s x {rounds} rounds, {streams} stream(s)):")
        print(f"  direct to the server    {statistics.median(direct):8.2f} Gbit/s  "
              f"({', '.join(f'{x:.2f}' for x in direct)})")  # fmt: skip
        print(f"  through the TCP proxy   {statistics.median(proxied):8.2f} Gbit/s  "
              f"({', '.join(f'{x:.2f}' for x in proxied)})")  # fmt: skip
        ratio = statistics.median(proxied) / statistics.median(direct)
        print(f"  ratio proxy/direct: {ratio:.2f}x of medians, {statistics.median(ratios):.2f}x "
              "median of per-round ratios")  # fmt: skip
    finally:
        await proxy.close()
        server.terminate()
        await server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--part", choices=("guest", "loopback", "both"), default="both")
    args = parser.parse_args()
    if args.part in ("guest", "both"):
        run_guest(args.rounds, args.mib)
    if args.part in ("loopback", "both"):
        asyncio.run(run_loopback(args.rounds, args.seconds, args.streams))


if __name__ == "__main__":
    main()
