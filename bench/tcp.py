"""Service groups' TCP path: throughput through Ember's TCP proxy vs straight to the
same server, in the same run.

The proxy (`ember.groups.tcp.TcpProxy`, as the group manager runs it) listens on
loopback and places every connection on one iperf3 server (the "instance"); iperf3's
client measures a bulk transfer straight to that server and through the proxy,
alternating rounds. Loopback and a host-side server, not a guest: under TCG a guest's
own TCP stack is far slower than either path and would hide what the proxy costs
(Python copying every byte is the question). Target: >= 0.8x.

    .venv/bin/python -m bench.tcp [--rounds 4] [--seconds 3] [--streams 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics

from ember.groups.tcp import TcpProxy

HOST = "127.0.0.1"


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


async def run(rounds: int, seconds: float, streams: int) -> None:
    target, front = free_port(), free_port()
    server = await asyncio.create_subprocess_exec(
        "iperf3", "-s", "-B", HOST, "-p", str(target), stdout=asyncio.subprocess.DEVNULL
    )

    async def place(group_id: str, port: int) -> str:
        return f"{HOST}:{target}"

    proxy = TcpProxy(HOST, place)
    try:
        await until_listening(target)
        await proxy.sync({front: "bench"})
        direct: list[float] = []
        proxied: list[float] = []
        for index in range(rounds):
            order = [(direct, target), (proxied, front)]
            for figures, port in order if index % 2 == 0 else order[::-1]:
                figures.append(await iperf(port, seconds, streams))
                await asyncio.sleep(1)  # iperf3 -s takes a moment between tests
        ratios = [p / d for p, d in zip(proxied, direct, strict=True)]
        print(f"direct to the server:  {statistics.median(direct):.2f} Gbit/s "
              f"(rounds {', '.join(f'{x:.2f}' for x in direct)})")  # fmt: skip
        print(f"through the TCP proxy: {statistics.median(proxied):.2f} Gbit/s "
              f"(rounds {', '.join(f'{x:.2f}' for x in proxied)})")  # fmt: skip
        ratio = statistics.median(proxied) / statistics.median(direct)
        print(f"ratio proxy/direct: {ratio:.2f}x (median of per-round ratios "
              f"{statistics.median(ratios):.2f}x; target >= 0.8x)")  # fmt: skip
    finally:
        await proxy.close()
        server.terminate()
        await server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--streams", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.seconds, args.streams))


if __name__ == "__main__":
    main()
