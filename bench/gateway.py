"""What the cluster gateway adds: create-to-Running and `exec true` through `ember gateway`
beside the same calls straight to the host, in one run.

A one-host cluster (its etcd member and `ember serve` in a namespace on a bridge, the
gateway in the hub namespace, `ember.testkit.cluster`); the client runs in the hub, so
both paths cross the same bridge and the gateway path adds the gateway's hop, its
token check, placement, the etcd claim (a Raft write) and the proxying. The two paths
take turns, so load from elsewhere on the shared machine falls on both alike; the
figures are medians. A create is also measured less the host's own time to answer it
(the host's `Server-Timing: app;dur=`, passed on by the gateway): what is left is the
network, the client's connection and, through the gateway, everything the gateway adds,
without the host's start of a VM (tens to hundreds of ms either way on a loaded machine).

    .venv/bin/python -m bench.gateway [--creates 5] [--execs 50]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from hypeman import Hypeman, NotFoundError
from hypeman.lib.exec import exec as hm_exec

from bench.common import WORKLOAD
from ember.testkit import hello_image, push
from ember.testkit.cluster import HOST_PORT, Cluster, cluster
from ember.testkit.netns import in_netns

IMAGE = f"127.0.0.1:{HOST_PORT}/hello:latest"


def create_to_running(api: Hypeman, name: str) -> tuple[float, float, float]:
    """(seconds until the create answered, seconds until Running, seconds the host took to
    answer by its `Server-Timing`), then deleted."""
    started = time.perf_counter()
    raw = api.instances.with_raw_response.create(
        name=name, image=IMAGE, cmd=WORKLOAD, vcpus=1, size="256MB"
    )
    answered = time.perf_counter() - started
    instance = raw.parse()
    while api.instances.get(instance.id).state != "Running":
        time.sleep(0.01)
    running = time.perf_counter() - started
    api.instances.delete(instance.id)
    return answered, running, _app_seconds(raw.headers.get("server-timing", ""))


def _app_seconds(timing: str) -> float:
    """The host's `app;dur=<ms>` of a `Server-Timing` value, in seconds."""
    for entry in timing.split(","):
        phase, _, duration = entry.strip().partition(";dur=")
        if phase == "app":
            return float(duration) / 1000
    raise ValueError(f"no app;dur in Server-Timing {timing!r}")


def refused_create(api: Hypeman, name: str) -> float:
    """A create the host answers 404 (no such image): placement, the name's claim and its
    release, the forward, without a VM's boot in the figure."""
    started = time.perf_counter()
    with contextlib.suppress(NotFoundError):
        api.instances.create(name=name, image="bench/none:1", vcpus=1, size="256MB")
    return time.perf_counter() - started


def exec_true(api: Hypeman, ref: str) -> float:
    started = time.perf_counter()
    result = hm_exec(api, ref, ["true"], wait_for_agent=60)
    assert result.exit_code == 0, result
    return time.perf_counter() - started


def measure(ring: Cluster, creates: int, execs: int) -> dict[str, list[float]]:
    """Run inside the hub namespace: both paths, taking turns."""
    token = ring.token()
    paths = {
        "gateway": Hypeman(base_url=ring.gateways[0].url, api_key=token, max_retries=0),
        "direct": Hypeman(base_url=ring.address("h1"), api_key=token, max_retries=0),
    }
    kinds = ("answer", "beside", "running", "refused", "exec")
    out: dict[str, list[float]] = {f"{k} {p}": [] for k in kinds for p in paths}
    for round_ in range(creates):
        # Which path goes first alternates: a VM still settling slows the next create.
        for path, api in sorted(paths.items(), reverse=bool(round_ % 2)):
            answered, running, on_host = create_to_running(api, f"bench-{path}-{round_}")
            out[f"answer {path}"].append(answered)
            out[f"running {path}"].append(running)
            out[f"beside {path}"].append(answered - on_host)
    for round_ in range(execs):  # no VM: the gateway's whole create path, host included
        for path, api in paths.items():
            out[f"refused {path}"].append(refused_create(api, f"bench-none-{path}-{round_}"))
    target = paths["direct"].instances.create(name="bench-exec", image=IMAGE, cmd=WORKLOAD,
                                              vcpus=1, size="256MB")  # fmt: skip
    for api in paths.values():
        exec_true(api, target.id)  # warm: the agent is up, connections are made
    for _ in range(execs):
        for path, api in paths.items():
            out[f"exec {path}"].append(exec_true(api, target.id))
    paths["direct"].instances.delete(target.id)
    return out


def report(figures: dict[str, Any]) -> None:
    print(f"{'measure':<26}{'direct':>12}{'gateway':>12}{'delta':>12}{'ratio':>8}")
    for kind, label in (("answer", "create answered"), ("beside", "create less host's time"),
                        ("running", "create to Running"),
                        ("refused", "create, image unknown"), ("exec", "exec true")):  # fmt: skip
        direct = statistics.median(figures[f"{kind} direct"]) * 1000
        gateway = statistics.median(figures[f"{kind} gateway"]) * 1000
        print(f"{label:<26}{direct:>10.1f}ms{gateway:>10.1f}ms{gateway - direct:>+10.1f}ms"
              f"{gateway / direct:>8.3f}")  # fmt: skip
    print("targets: the gateway adds <= 10 ms to a create, <= 5 ms to an exec (medians)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creates", type=int, default=5, help="creates per path")
    parser.add_argument("--execs", type=int, default=50, help="`exec true` per path")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    try:
        with cluster(root, size=1) as ring:
            host = ring.hosts["h1"]
            upload = partial(push, token=host.token())
            in_netns(ring.namespaces["h1"], upload, hello_image(), host.url, "hello", "latest")
            in_netns(ring.namespaces["h1"], wait_ready, host.url, host.token())
            report(in_netns(ring.hub, measure, ring, args.creates, args.execs))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def wait_ready(url: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    name = IMAGE.replace("/", "%2F")
    while httpx.get(f"{url}/images/{name}", headers=headers).json().get("status") != "ready":
        time.sleep(0.1)


if __name__ == "__main__":
    main()
