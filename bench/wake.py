"""Service groups: wake on the first request vs a plain restore, and the balancer's
throughput over 3 instances vs one instance directly, in the same run.

A real `ember serve` (guest RAM in files: EMBER_GUEST_MEMORY_FILE=always) runs inside
a network namespace this script creates. The testkit hello image serves HTTP.

- Wake: an instance alone in group "wake" (scale-to-zero on, a cooldown too long to
  fire: the bench puts it in standby itself). Each round puts it in standby through
  the API, then either times one request through Caddy to the group (the time to the
  first byte: the waker's decision, the restore, the proxying) or times a plain
  `POST /instances/{id}/restore` (the API round trip) and then, at once from the same
  process, the first request straight to the guest, alternating which goes first;
  then one request to the awake group (TTFB). Target: wake TTFB <= restore + 50 ms
  (medians). Each wake is split on the wall clock by the server's log line of the
  wake (its start and end): request -> waker, the restore, waker's answer -> first
  byte; the last beside the guest's first answer after a plain restore shows what
  the balancer and the waker add and what the just-restored guest costs.
- Throughput: wrk through Caddy to a group of 3 awake instances vs wrk straight to one
  of them, alternating rounds as bench/ingress does. Target: >= 0.8x.

    .venv/bin/python -m bench.wake [--rounds 10] [--wrk-rounds 6] [--seconds 3]
                                   [--connections 16]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import WORKLOAD, push_hello
from bench.ingress import HOST, Load, api, caddy_idle_gone, median_load, wait_http, wrk
from ember.testkit.ember_server import EmberServer
from ember.testkit.netns import in_netns, netns

WAKE_HOST = "wake.bench.test"
GROUP_URL = "http://127.0.0.1:80/"
GROUP_ADDRESS = ("127.0.0.1", 80)
BALANCED = ("bench-a", "bench-b", "bench-c")
SLEEPER = "bench-sleeper"


def set_up(server: EmberServer) -> str:
    """(In the namespace.) Groups and instances; the address of the first balanced one."""
    with api(server) as http:
        image, _ = push_hello(server, http)
        for name, host in (("bench", HOST), ("wake", WAKE_HOST)):
            group = {"name": name, "services": [{"port": 80, "destination_port": 8080}],
                    "domains": [{"name": host}]}  # fmt: skip
            http.post("/service-groups", json=group).raise_for_status()
        asleep = {"policy": "on", "stateful": True, "cooldown_time_ms": 3_600_000}
        members: list[tuple[str, str, dict[str, object] | None]] = [
            *((n, "bench", None) for n in BALANCED),
            (SLEEPER, "wake", asleep),
        ]
        for name, group_name, scale in members:
            body: dict[str, object] = {
                "name": name, "image": image, "vcpus": 1, "size": "256MB", "cmd": WORKLOAD,
                "service_group": {"name": group_name},
            }  # fmt: skip
            if scale:
                body["scale_to_zero"] = scale
            http.post("/instances", json=body).raise_for_status()
        for name, _, _ in members:
            http.get(f"/instances/{name}/wait", params={"state": "Running", "timeout": "120s"},
                     timeout=130).raise_for_status()  # fmt: skip
        ip: str = http.get(f"/instances/{BALANCED[0]}").json()["network"]["ip"]
        asleep_ip = http.get(f"/instances/{SLEEPER}").json()["network"]["ip"]
    wait_http(f"http://{ip}:8080/")
    wait_http(f"http://{asleep_ip}:8080/")  # its program listens before its first standby
    wait_http(GROUP_URL)
    return ip


def standby(server: EmberServer) -> None:
    """(In the namespace.) The sleeper to standby, its VMM gone (a settled standby)."""
    with api(server) as http:
        http.post(f"/instances/{SLEEPER}/standby").raise_for_status()
        while http.get(f"/instances/{SLEEPER}").json()["state"] != "Standby":
            time.sleep(0.05)
    time.sleep(0.5)  # the VMM's exit and the monitor's release follow the answer


def restore(server: EmberServer) -> float:
    """(In the namespace.) Seconds of the API's restore round trip."""
    with api(server) as http:
        started = time.perf_counter()
        http.post(f"/instances/{SLEEPER}/restore").raise_for_status()
        return time.perf_counter() - started


FAILED: list[str] = []  # requests that got no 200, with what they got instead
WOKE = re.compile(r"woke instance (\S+) .* wake_started_at=([\d.]+) wake_ended_at=([\d.]+)")


@dataclass(frozen=True)
class Exchange:
    """One GET on a new connection, on the wall clock (the server logs on the same one)."""

    started: float  # before connecting
    first_byte: float
    status: int
    head: str

    @property
    def ttfb(self) -> float:
        return self.first_byte - self.started


def get(address: tuple[str, int], host: str) -> Exchange:
    """(In the namespace.) One request, timed in this process: no process start between
    what is timed (a curl per request added its start-up to the first request direct)."""
    started = time.time()
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = sock.recv(65536)
        first_byte = time.time()
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.decode(errors="replace")
    status = int(head.split(" ", 2)[1]) if head.startswith("HTTP/") else 0
    return Exchange(started, first_byte, status, head)


def checked(exchange: Exchange, what: str) -> float:
    """Its TTFB in seconds; a failure is recorded in FAILED and counts as NaN."""
    if exchange.status != 200:
        FAILED.append(f"{what}: {exchange.status} {exchange.head.strip()[-80:]}")
        return math.nan
    return exchange.ttfb


def restore_then_get(server: EmberServer, address: tuple[str, int]) -> tuple[float, Exchange]:
    """(In the namespace.) The API's restore round trip, then at once the first request
    straight to the guest: what a wake does minus the balancer and the waker."""
    seconds = restore(server)
    return seconds, get(address, WAKE_HOST)


def woke(server: EmberServer, after: float) -> tuple[float, float] | None:
    """The server's wall-clock start and end of the sleeper's last wake (its log line)."""
    log = server.data_dir.parent / f"ember-{server.port}.log"
    found = [m for line in log.read_text(errors="replace").splitlines()
             if (m := WOKE.search(line)) and m[1] == SLEEPER and float(m[2]) >= after]  # fmt: skip
    return (float(found[-1][2]), float(found[-1][3])) if found else None


def sleeper_ip(server: EmberServer) -> str:
    with api(server) as http:
        ip: str = http.get(f"/instances/{SLEEPER}").json()["network"]["ip"]
        return ip


def measure_wake(ns: str, server: EmberServer, rounds: int) -> dict[str, list[float]]:
    """Per round, in alternating order: a wake by request, and a plain restore followed
    by the first request straight to the guest (a guest just restored under TCG answers
    its first request slower); each followed by a request to the awake group. A wake is
    split by the server's log: request -> waker, the wake (the restore), the waker's
    answer -> first byte."""
    kinds = ("wake", "restore", "first", "guest_first", "awake", "to_waker", "in_wake",
             "after_wake")  # fmt: skip
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    direct = (in_netns(ns, sleeper_ip, server), 8080)
    for round_ in range(rounds):
        order = ("wake", "restore") if round_ % 2 == 0 else ("restore", "wake")
        for kind in order:
            in_netns(ns, standby, server)
            if kind == "wake":
                exchange = in_netns(ns, get, GROUP_ADDRESS, WAKE_HOST)
                times["wake"].append(checked(exchange, "wake"))
                phases = woke(server, exchange.started)
                if phases is not None and exchange.status == 200:
                    times["to_waker"].append(phases[0] - exchange.started)
                    times["in_wake"].append(phases[1] - phases[0])
                    times["after_wake"].append(exchange.first_byte - phases[1])
            else:
                seconds, exchange = in_netns(ns, restore_then_get, server, direct)
                times["restore"].append(seconds)
                times["guest_first"].append(checked(exchange, "first request direct"))
                times["first"].append(seconds + times["guest_first"][-1])
            times["awake"].append(checked(in_netns(ns, get, GROUP_ADDRESS, WAKE_HOST), "awake"))
    return times


def measure_throughput(ns: str, ip: str, args: argparse.Namespace) -> dict[str, list[Load]]:
    loads: dict[str, list[Load]] = {"direct": [], "group": []}
    for round_ in range(args.wrk_rounds):
        for kind in ("direct", "group") if round_ % 2 == 0 else ("group", "direct"):
            if kind == "direct":
                caddy_idle_gone(ns, ip)
                loads["direct"].append(wrk(ns, f"http://{ip}:8080/", args))
            else:
                loads["group"].append(wrk(ns, GROUP_URL, args))
    return loads


def report(
    times: dict[str, list[float]], loads: dict[str, list[Load]], args: argparse.Namespace
) -> None:
    times = {kind: [v for v in values if not math.isnan(v)] for kind, values in times.items()}
    ms = {kind: statistics.median(values) * 1000 for kind, values in times.items() if values}
    print(f"wake ({args.rounds} rounds, 256 MB guest, RAM in a file), medians in ms:")
    for kind, label in (("wake", "request to the asleep group (TTFB)"),
                        ("restore", "plain restore through the API"),
                        ("first", "that restore + first request direct"),
                        ("guest_first", "  of which the guest's first answer"),
                        ("awake", "request to the awake group (TTFB)"),
                        ("to_waker", "wake: request -> waker (Caddy)"),
                        ("in_wake", "wake: the restore (server's log)"),
                        ("after_wake", "wake: waker's answer -> first byte")):  # fmt: skip
        values = ", ".join(f"{v * 1000:.0f}" for v in times[kind])
        print(f"  {label:40}{ms.get(kind, math.nan):8.1f}   ({values})")
    print(f"  wake - restore: {ms['wake'] - ms['restore']:+.1f} ms (target <= +50 ms); "
          f"wake/restore {ms['wake'] / ms['restore']:.2f}x; wake/awake "
          f"{ms['wake'] / ms['awake']:.1f}x; wake - (restore + first request): "
          f"{ms['wake'] - ms['first']:+.1f} ms")  # fmt: skip
    if {"to_waker", "in_wake", "after_wake"} <= ms.keys():
        added = ms["to_waker"] + ms["after_wake"] - ms["guest_first"]
        print(f"  Ember's balancer and waker add {added:+.1f} ms (request -> waker + waker's "
              f"answer -> first byte - the guest's first answer direct); the guest's first "
              f"answer after a restore costs {ms['guest_first'] - ms['awake']:+.1f} ms over an "
              f"awake one")  # fmt: skip
    print(f"  failed requests: {len(FAILED)}" + "".join(f"\n    {f}" for f in FAILED))
    d_rps, d_p99, d_err = median_load(loads["direct"])
    g_rps, g_p99, g_err = median_load(loads["group"])
    print(f"throughput (wrk 1 thread, {args.connections} connections, {args.seconds}s x "
          f"{args.wrk_rounds} rounds, alternating; hello: one connection at a time):")  # fmt: skip
    print(f"  {'':32}{'req/s':>10}{'p99 ms':>10}{'errors':>8}")
    print(f"  {'one instance, direct':32}{d_rps:10.0f}{d_p99:10.2f}{d_err:8}")
    print(f"  {'group of 3 through Caddy':32}{g_rps:10.0f}{g_p99:10.2f}{g_err:8}")
    pairs = [g.requests_per_second / max(d.requests_per_second, 1.0)
             for d, g in zip(loads["direct"], loads["group"], strict=True)]  # fmt: skip
    print(
        f"  ratio group/direct: {g_rps / d_rps:.2f}x of medians, "
        f"{statistics.median(pairs):.2f}x median of per-pair ratios (target >= 0.8x)"
    )


def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    with netns() as ns:
        server = EmberServer(root / "data", netns=ns, env={"EMBER_GUEST_MEMORY_FILE": "always"})
        try:
            server.start()
            ip = in_netns(ns, set_up, server)
            before = os.getloadavg()[0]
            times = measure_wake(ns, server, args.rounds)
            loads = measure_throughput(ns, ip, args)
            report(times, loads, args)
            # A shared machine: the figures mean little without how busy it was.
            print(f"load average (1 min): {before:.1f} at the start, "
                  f"{os.getloadavg()[0]:.1f} at the end")  # fmt: skip
        finally:
            server.clean_up()
            server.stop()
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--wrk-rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
