"""Autoscale: time for a group to go from 1 to N Running members under load, against
the same N-1 members created by hand through the API, under the same load, in the
same run.

A real `ember serve` runs inside a network namespace this script creates. The guest is
busybox httpd with a CGI that burns the CPU for 3 s per request; the load is 2N curl
loops to it through the group's balancer (Caddy).

- Baselines: group "manual" with one member; under load, N-1 more are created by hand
  through the API, either all at once (N-1 `POST /instances` back to back, then
  `/wait` for each to be Running: the fastest a client can do it) or one at a time
  (each create waits for Running before the next); then they are deleted.
- Autoscale: group "auto" with `min_size` 1, `max_size` N, a step policy on the
  in-flight requests per member (+1 member while the mean is >= 1), no cooldown or
  warmup (the bench measures how fast the loop follows, not the policy's caution).
  The clock runs from the start of the load to N Running members.

The ratio autoscaled/all at once says what the loop adds (detection, one pass a second,
one create per pass, the decision records) over creating the same members directly.
The autoscaler's creates overlap (a create answers while its VM still boots, and the
next pass makes the next member), so it can beat the one-at-a-time baseline. One
instance is booted and deleted first (untimed: the image's first use), and the rounds
alternate which kind goes first; medians are reported.

    .venv/bin/python -m bench.autoscale [--members 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time

import httpx

from bench.common import bench_dir
from ember.testkit import push
from ember.testkit.ember_server import EmberServer, serving
from ember.testkit.image import BuiltImage, build_image, busybox_layer, directory, file
from ember.testkit.netns import in_netns, netns

PORT = 8000
BURN = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
end=$(( $(date +%s) + 3 ))
while [ "$(date +%s)" -lt "$end" ]; do :; done
echo burnt
"""
SERVE = ["/bin/sh", "-c", "exec httpd -f -p 8080 -h /www"]
MEMBER = {"vcpus": 1, "size": "256MB"}
KINDS = ("at once", "autoscaled", "one by one")
INFLIGHT_POLICY = {
    "name": "inflight", "metric": "inflight", "adjustment_type": "change",
    "steps": [{"adjustment": 0, "upper_bound": 1}, {"adjustment": 1, "lower_bound": 1}],
}  # fmt: skip


def guest_image() -> BuiltImage:
    www = {"www": directory(), "www/cgi-bin": directory(), "www/cgi-bin/burn": file(BURN, 0o755)}
    return build_image([busybox_layer(), www], cmd=SERVE)


def api(server: EmberServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.token()}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=300)


class Load:
    """`clients` loops of burning requests through the balancer to `host`."""

    def __init__(self, host: str, clients: int) -> None:
        self.host, self.stopped = host, threading.Event()
        self.threads = [threading.Thread(target=self._loop) for _ in range(clients)]

    def _loop(self) -> None:
        while not self.stopped.is_set():
            done = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60",
                 "-H", f"Host: {self.host}", f"http://127.0.0.1:{PORT}/cgi-bin/burn"],
                capture_output=True, text=True,
            )  # fmt: skip
            if done.stdout != "200":
                time.sleep(0.2)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join()


def group(http: httpx.Client, name: str) -> None:
    body = {"name": name, "services": [{"port": PORT, "destination_port": 8080}],
            "domains": [{"name": f"{name}.bench.test"}]}  # fmt: skip
    http.post("/service-groups", json=body).raise_for_status()


def running(http: httpx.Client, name: str) -> list[str]:
    members = http.get(f"/service-groups/{name}").json()["instances"]
    return [m["name"] for m in members if m["state"] == "Running"]


def until_running(http: httpx.Client, name: str, count: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while len(running(http, name)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"group {name}: not {count} Running members within {timeout:.0f}s")
        time.sleep(0.1)


def manual(server: EmberServer, image: str, members: int, kind: str) -> float:
    """(In the namespace.) Seconds to create members 2..N by hand under load, `kind`
    "at once" or "one by one"."""
    with api(server) as http:
        group(http, "manual")
        names = [f"manual-{i}" for i in range(members)]
        create(http, image, names[0])
        wait(http, names[0])
        with Load("manual.bench.test", 2 * members):
            started = time.perf_counter()
            for name in names[1:]:
                create(http, image, name)
                if kind == "one by one":
                    wait(http, name)
            for name in names[1:]:
                wait(http, name)
            took = time.perf_counter() - started
        for name in names:
            http.delete(f"/instances/{name}").raise_for_status()
        http.delete("/service-groups/manual").raise_for_status()
        return took


def create(http: httpx.Client, image: str, name: str) -> None:
    body = {"name": name, "image": image, **MEMBER, "service_group": {"name": "manual"}}
    http.post("/instances", json=body).raise_for_status()


def wait(http: httpx.Client, name: str) -> None:
    http.get(f"/instances/{name}/wait", params={"state": "Running", "timeout": "300s"},
             timeout=310).raise_for_status()  # fmt: skip


def autoscaled(server: EmberServer, image: str, members: int) -> tuple[float, list[str]]:
    """(In the namespace.) Seconds from the load's start to N Running members, and the
    decisions' reasons."""
    with api(server) as http:
        group(http, "auto")
        config = {"min_size": 1, "max_size": members, "warmup_time_ms": 0,
                  "cooldown_time_ms": 0, "policies": [INFLIGHT_POLICY],
                  "create_args": {"image": image, **MEMBER}}  # fmt: skip
        http.put("/service-groups/auto/autoscale", json=config).raise_for_status()
        until_running(http, "auto", 1)
        with Load("auto.bench.test", 2 * members):
            started = time.perf_counter()
            until_running(http, "auto", members)
            took = time.perf_counter() - started
        decisions = http.get("/service-groups/auto/autoscale/decisions").json()[::-1]
        http.delete("/service-groups/auto/autoscale").raise_for_status()
        for name in running(http, "auto"):
            http.delete(f"/instances/{name}").raise_for_status()
        http.delete("/service-groups/auto").raise_for_status()
        return took, [f"{d['action']} {d['size_before']}->{d['size_after']}: {d['reason']}"
                      for d in decisions]  # fmt: skip


def set_up(server: EmberServer) -> str:
    """(In the namespace.) The burning image, pushed and ready."""
    push(guest_image(), server.url, "bench/burn", "v1", token=server.token())
    image = f"127.0.0.1:{server.port}/bench/burn:v1"
    with api(server) as http:
        while http.get(f"/images/{image.replace('/', '%2F')}").json()["status"] != "ready":
            time.sleep(0.05)
        group(http, "manual")
        create(http, image, "warm-up")  # the image's first boot, untimed
        wait(http, "warm-up")
        http.delete("/instances/warm-up").raise_for_status()
        http.delete("/service-groups/manual").raise_for_status()
    return image


def run(args: argparse.Namespace) -> None:
    with bench_dir() as root, netns() as ns, serving(root / "data", ns) as server:
        image = in_netns(ns, set_up, server)
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        reasons: list[str] = []
        for round_ in range(args.rounds):
            for kind in KINDS if round_ % 2 == 0 else KINDS[::-1]:
                if kind == "autoscaled":
                    took, reasons = in_netns(ns, autoscaled, server, image, args.members)
                else:
                    took = in_netns(ns, manual, server, image, args.members, kind)
                times[kind].append(took)
    clients = 2 * args.members
    print(f"autoscale: 1 -> {args.members} Running members under load (TCG, 1 vCPU 256 MB "
          f"members, {clients} clients of a 3 s CPU-burning CGI):")  # fmt: skip
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    for kind, label in (("autoscaled", "autoscaled (inflight policy, +1 per pass)"),
                        ("at once", "by hand, N-1 creates at once, then waits"),
                        ("one by one", "by hand, each create waits for Running")):  # fmt: skip
        rounds = ", ".join(f"{t:.1f}" for t in times[kind])
        print(f"  {label:44}{medians[kind]:8.1f} s   ({rounds})")
    print(f"  ratio autoscaled/at once: {medians['autoscaled'] / medians['at once']:.2f}x, "
          f"autoscaled/one by one: {medians['autoscaled'] / medians['one by one']:.2f}x "
          f"(medians of {args.rounds} rounds)")  # fmt: skip
    print("  decisions of the last autoscaled round:" + "".join(f"\n    {r}" for r in reasons))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=5, help="N: the group's max_size")
    parser.add_argument("--rounds", type=int, default=2, help="of each kind, alternating")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
