"""Service groups: wake on the first request vs a plain restore, and the balancer's
throughput over 3 instances vs one instance directly, in the same run.

A real `ember serve` (guest RAM in files: EMBER_GUEST_MEMORY_FILE=always) runs inside
a network namespace this script creates. The testkit hello image serves HTTP.

- Wake: an instance alone in group "wake" (scale-to-zero on, a cooldown too long to
  fire: the bench puts it in standby itself). Each round puts it in standby through
  the API, then either times one request through Caddy to the group (curl's time to
  the first byte: the waker's decision, the restore, the proxying) or times a plain
  `POST /instances/{id}/restore` (the API round trip) and then the first request
  straight to the guest, alternating which goes first; then one request to the awake
  group (TTFB). Target: wake TTFB <= restore + 50 ms (medians).
- Throughput: wrk through Caddy to a group of 3 awake instances vs wrk straight to one
  of them, alternating rounds as bench/ingress does. Target: >= 0.8x.

    .venv/bin/python -m bench.wake [--rounds 10] [--wrk-rounds 6] [--seconds 3]
                                   [--connections 16]
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import WORKLOAD, push_hello
from bench.ingress import HOST, Load, api, caddy_idle_gone, median_load, wait_http, wrk
from ember.testkit.ember_server import EmberServer
from ember.testkit.netns import in_netns, netns

WAKE_HOST = "wake.bench.test"
GROUP_URL = "http://127.0.0.1:80/"
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
    wait_http(f"http://{ip}:8080/")
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


def ttfb(ns: str, host: str, url: str = GROUP_URL) -> float:
    """Seconds to the first byte; a failure is recorded in FAILED and counts as NaN."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "30",
         "-w", "\n%{http_code} %{time_starttransfer}", "-H", f"Host: {host}", url],
        capture_output=True, text=True,
    )  # fmt: skip
    body, _, timing = done.stdout.rpartition("\n")
    status, _, seconds = timing.partition(" ")
    if done.returncode or status != "200":
        FAILED.append(f"{host}: curl exit {done.returncode}, {status} {body.strip()[:80]}")
        return math.nan
    return float(seconds)


def sleeper_ip(server: EmberServer) -> str:
    with api(server) as http:
        ip: str = http.get(f"/instances/{SLEEPER}").json()["network"]["ip"]
        return ip


def measure_wake(ns: str, server: EmberServer, rounds: int) -> dict[str, list[float]]:
    """Per round, in alternating order: a wake by request, and a plain restore followed
    by the first request straight to the guest (what the wake does minus the balancer:
    a guest just restored under TCG answers its first request slower)."""
    times: dict[str, list[float]] = {"wake": [], "restore": [], "first": [], "awake": []}
    direct = f"http://{in_netns(ns, sleeper_ip, server)}:8080/"
    for round_ in range(rounds):
        order = ("wake", "restore") if round_ % 2 == 0 else ("restore", "wake")
        for kind in order:
            in_netns(ns, standby, server)
            if kind == "wake":
                times["wake"].append(ttfb(ns, WAKE_HOST))
            else:
                times["restore"].append(in_netns(ns, restore, server))
                times["first"].append(times["restore"][-1] + ttfb(ns, WAKE_HOST, direct))
            times["awake"].append(ttfb(ns, WAKE_HOST))
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
    ms = {kind: statistics.median(values) * 1000 for kind, values in times.items()}
    print(f"wake ({args.rounds} rounds, 256 MB guest, RAM in a file), medians in ms:")
    for kind, label in (("wake", "request to the asleep group (TTFB)"),
                        ("restore", "plain restore through the API"),
                        ("first", "that restore + first request direct"),
                        ("awake", "request to the awake group (TTFB)")):  # fmt: skip
        values = ", ".join(f"{v * 1000:.0f}" for v in times[kind])
        print(f"  {label:40}{ms[kind]:8.1f}   ({values})")
    print(f"  wake - restore: {ms['wake'] - ms['restore']:+.1f} ms (target <= +50 ms); "
          f"wake/restore {ms['wake'] / ms['restore']:.2f}x; wake/awake "
          f"{ms['wake'] / ms['awake']:.1f}x; wake - (restore + first request): "
          f"{ms['wake'] - ms['first']:+.1f} ms")  # fmt: skip
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
            times = measure_wake(ns, server, args.rounds)
            loads = measure_throughput(ns, ip, args)
            report(times, loads, args)
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
