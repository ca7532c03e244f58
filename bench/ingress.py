"""Ingress throughput: requests/s and p99 to a real Ember VM, through the ingress and direct.

A real `ember serve` runs inside a network namespace this script creates (bridge,
TAP, DNS responder and the ingress Caddy all live there). The testkit hello image
(`/hello serve 8080`, a one-connection-at-a-time server answering
"hello from ember") runs as an instance; an ingress rule routes a hostname to it.
wrk, from inside the namespace, alternates between the guest's address (direct)
and Caddy on 127.0.0.1:80 with the rule's Host header (ingress), so machine noise
hits both alike (pairs of rounds, the order flipping each pair); the figures are
medians over the rounds, and the median of the per-pair ratios, which holds up
better on a shared machine whose load swings between pairs. Then host->guest TCP
throughput: a guest `nc -l` started through exec, and a timed send of N MiB from
the namespace side, until the guest closes (everything received).

    .venv/bin/python -m bench.ingress [--rounds 8] [--seconds 3] [--connections 16]
                                      [--tcp-mib 64] [--tcp-rounds 3]
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass

import httpx

from bench.common import WORKLOAD, bench_dir, push_hello
from ember.client.client import EmberClient
from ember.client.streams import run_command
from ember.testkit.ember_server import EmberServer, serving
from ember.testkit.netns import in_netns, netns

MIB = 1024 * 1024
HOST = "bench.ingress.test"
INSTANCE = "bench-web"
GUEST_PORT = 8080
TCP_PORT = 5001
INGRESS_URL = "http://127.0.0.1:80/"


@dataclass
class Load:
    requests_per_second: float
    p99_ms: float
    errors: int  # socket errors plus non-2xx/3xx answers


def parse_wrk(output: str) -> Load:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", output)
    if not rps or not p99:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return Load(float(rps.group(1)), float(p99.group(1)) * scale, errors)


def wrk(ns: str, url: str, args: argparse.Namespace) -> Load:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "wrk", "-t1", f"-c{args.connections}",
         f"-d{args.seconds}s", "--timeout", "2s", "--latency", "-H", f"Host: {HOST}", url],
        capture_output=True, text=True, timeout=args.seconds + 30,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"wrk failed: {done.stderr}")
    return parse_wrk(done.stdout)


def api(server: EmberServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.token()}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def wait_http(url: str) -> None:
    for _ in range(100):
        try:
            if httpx.get(url, headers={"Host": HOST}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} does not answer")


def set_up(server: EmberServer) -> str:
    """(In the namespace.) The image, a running instance and an ingress to it: its address."""
    with api(server) as http:
        image, _ = push_hello(server, http)
        created = http.post(
            "/instances",
            json={"name": INSTANCE, "image": image, "vcpus": 1, "size": "512MB", "cmd": WORKLOAD},
        )  # fmt: skip
        if created.status_code != 201:
            raise RuntimeError(f"create failed: {created.status_code} {created.text}")
        waited = http.get(
            f"/instances/{INSTANCE}/wait", params={"state": "Running", "timeout": "90s"},
            timeout=100,
        ).json()  # fmt: skip
        if waited["state"] != "Running":
            raise RuntimeError(f"instance did not reach Running: {waited}")
        rule = {"match": {"hostname": HOST, "port": 80},
                "target": {"instance": INSTANCE, "port": GUEST_PORT}}  # fmt: skip
        ingress = http.post("/ingresses", json={"name": "bench", "rules": [rule]})
        if ingress.status_code != 201:
            raise RuntimeError(f"ingress create failed: {ingress.status_code} {ingress.text}")
        ip: str = http.get(f"/instances/{INSTANCE}").json()["network"]["ip"]
    wait_http(f"http://{ip}:{GUEST_PORT}/")
    wait_http(INGRESS_URL)
    return ip


def caddy_idle_gone(ns: str, ip: str) -> None:
    """Wait (bounded) until Caddy holds no connection to the guest: hello serves one
    connection at a time and would sit on an idle pooled one, stalling a direct round."""
    for _ in range(50):
        listed = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-tanpH", "state", "established",
             "dst", f"{ip}:{GUEST_PORT}"],
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        if '"caddy"' not in listed:
            return
        time.sleep(0.1)


def measure_http(ns: str, ip: str, args: argparse.Namespace) -> dict[str, list[Load]]:
    """Pairs of rounds, direct first then ingress first in turn, so a drift in the
    machine's load (2 shared cores) does not favour one side."""
    loads: dict[str, list[Load]] = {"direct": [], "ingress": []}
    for round_ in range(args.rounds):
        for side in ("direct", "ingress")[:: 1 if round_ % 2 == 0 else -1]:
            if side == "direct":
                caddy_idle_gone(ns, ip)
                loads["direct"].append(wrk(ns, f"http://{ip}:{GUEST_PORT}/", args))
            else:
                loads["ingress"].append(wrk(ns, INGRESS_URL, args))
        d, i = loads["direct"][-1], loads["ingress"][-1]
        print(f"round {round_ + 1}: direct {d.requests_per_second:.0f} req/s "
              f"p99 {d.p99_ms:.1f} ms; ingress {i.requests_per_second:.0f} req/s "
              f"p99 {i.p99_ms:.1f} ms", flush=True)  # fmt: skip
    return loads


def send_to_guest(server: EmberServer, ip: str, size: int) -> float:
    """(In the namespace.) Seconds to move `size` bytes to a guest `nc -l`, end to end."""
    received: list[bytes] = []
    client = EmberClient(server.url, server.token())
    listener = threading.Thread(
        target=lambda: received.append(
            run_command(client, INSTANCE, ["sh", "-c", f"nc -l -p {TCP_PORT} | wc -c"])[0]
        ),
        daemon=True,
    )
    listener.start()
    try:
        sock = connect_when_listening(ip)
        chunk = b"\0" * MIB
        started = time.perf_counter()
        with sock:
            for _ in range(size // MIB):
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
            # nc exits at our EOF and closes: then the guest has read every byte.
            while sock.recv(65536):
                pass
        elapsed = time.perf_counter() - started
        listener.join(30)
    finally:
        client.close()
    count = int(received[0].split()[-1]) if received else -1
    if count != size:
        raise RuntimeError(f"the guest received {count} bytes of {size}")
    return elapsed


def connect_when_listening(ip: str) -> socket.socket:
    for _ in range(100):
        try:
            return socket.create_connection((ip, TCP_PORT), timeout=30)
        except OSError:
            time.sleep(0.1)  # exec and nc are still starting
    raise RuntimeError(f"nothing listens on {ip}:{TCP_PORT} in the guest")


def median_load(loads: list[Load]) -> tuple[float, float, int]:
    return (
        statistics.median(x.requests_per_second for x in loads),
        statistics.median(x.p99_ms for x in loads),
        sum(x.errors for x in loads),
    )


def report(loads: dict[str, list[Load]], tcp: list[float], args: argparse.Namespace) -> None:
    d_rps, d_p99, d_err = median_load(loads["direct"])
    i_rps, i_p99, i_err = median_load(loads["ingress"])
    print(f"guest: hello (1 vCPU); wrk: 1 thread, {args.connections} connections, "
          f"{args.seconds}s x {args.rounds} rounds, alternating")  # fmt: skip
    print(f"{'':10}{'req/s':>10}{'p99 ms':>10}{'errors':>8}")
    print(f"{'direct':10}{d_rps:10.0f}{d_p99:10.2f}{d_err:8}")
    print(f"{'ingress':10}{i_rps:10.0f}{i_p99:10.2f}{i_err:8}")
    pairs = [i.requests_per_second / max(d.requests_per_second, 1.0)
             for d, i in zip(loads["direct"], loads["ingress"], strict=True)]  # fmt: skip
    print(f"ratio ingress/direct: {i_rps / d_rps:.2f}x req/s of medians, "
          f"{statistics.median(pairs):.2f}x median of per-pair ratios (target >= 0.8x); "
          f"p99 {i_p99 / d_p99:.2f}x")  # fmt: skip
    rates = [args.tcp_mib / seconds for seconds in tcp]
    print(f"host->guest TCP (direct, {args.tcp_mib} MiB x {len(tcp)}): "
          f"{statistics.median(rates):.1f} MiB/s median "
          f"({', '.join(f'{r:.1f}' for r in rates)})")  # fmt: skip


def run(args: argparse.Namespace) -> None:
    with bench_dir() as root, netns() as ns, serving(root / "data", ns) as server:
        ip = in_netns(ns, set_up, server)
        loads = measure_http(ns, ip, args)
        tcp = [in_netns(ns, send_to_guest, server, ip, args.tcp_mib * MIB)
               for _ in range(args.tcp_rounds)]  # fmt: skip
        report(loads, tcp, args)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--tcp-mib", type=int, default=64)
    parser.add_argument("--tcp-rounds", type=int, default=3)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
