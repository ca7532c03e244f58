"""HTTPS requests/s from a guest: through the credential-brokering proxy vs directly.

A real `ember serve` runs inside a network namespace this script creates, beside an
HTTPS server (`ember.testkit.https_upstream`) on an address of that namespace. Two
instances of the same image run the static, certificate-verifying client
`/https-get`: `brokered` was created with a credential for the server's name (so its
TCP is redirected to Ember's proxy, which intercepts TLS with the instance's CA and
sets the real Authorization header), `direct` without mediated egress (its image
trusts the server's CA). Each round, each guest makes N sequential requests, each on
a new TCP connection and TLS handshake (the proxy's worst case: a handshake on each
side, per request); the guest's client times them. Rounds alternate which guest goes
first; figures are medians, and the median of the per-pair ratios.

    .venv/bin/python -m bench.egress [--rounds 6] [--requests 40]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from typing import Any

from bench.common import bench_dir
from ember.egress.ca import CA_CERT
from ember.testkit.ember_server import EmberServer, serving
from ember.testkit.https_upstream import https_upstream
from ember.testkit.image import https_client_image
from ember.testkit.netns import in_netns, netns
from ember.testkit.push import push

NAME, ADDRESS = "api.example.test", "10.77.0.1"
SIDES = ("brokered", "direct")


def set_up(server: EmberServer, upstream_ca: bytes) -> None:
    """(In the namespace.) The image and both instances, Running."""
    from hypeman import Hypeman
    from hypeman.types.instance_create_params import Credentials

    image = https_client_image(upstream_ca, cmd=["sleep", "3600"])
    push(image, server.url, "bench/https", "v1", token=server.token())
    name = f"127.0.0.1:{server.port}/bench/https:v1"
    official = Hypeman(base_url=server.url, api_key=server.token(), max_retries=0)
    while official.images.get(name).status != "ready":
        time.sleep(0.1)
    credential: Credentials = {
        "source": {"env": "KEY"},
        "inject": [
            {"hosts": [NAME], "as": {"header": "Authorization", "format": "Bearer ${value}"}}
        ],
    }
    common: dict[str, Any] = {"image": name, "size": "256MB", "vcpus": 1}
    official.instances.create(name="brokered", env={"KEY": "real-secret"},
                              credentials={"KEY": credential}, **common)  # fmt: skip
    official.instances.create(name="direct", env={"KEY": "real-secret"}, **common)
    for side in SIDES:
        state = official.instances.wait(side, state="Running", api_timeout="180s").state
        if state != "Running":
            raise RuntimeError(f"{side} did not reach Running: {state}")


def requests_per_second(server: EmberServer, side: str, count: int) -> float:
    """(In the namespace.) `count` new-connection HTTPS requests from one guest."""
    from hypeman import Hypeman
    from hypeman.lib.exec import exec as guest_exec

    official = Hypeman(base_url=server.url, api_key=server.token(), max_retries=0)
    command = f'/https-get {NAME} {ADDRESS} 443 / {count} "Authorization: Bearer $KEY"'
    result = guest_exec(official, side, ["sh", "-c", command], wait_for_agent=60)
    output = result.output.decode(errors="replace")
    timed = re.search(r"requests=(\d+) seconds=([\d.]+)", output)
    if result.exit_code != 0 or timed is None or "hello from upstream" not in output:
        raise RuntimeError(f"{side}: https-get failed ({result.exit_code}):\n{output}")
    return int(timed.group(1)) / float(timed.group(2))


def measure(ns: str, server: EmberServer, args: argparse.Namespace) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    in_netns(ns, requests_per_second, server, "brokered", 3)  # warm: leaf, caches
    in_netns(ns, requests_per_second, server, "direct", 3)
    for round_ in range(args.rounds):
        for side in SIDES[:: 1 if round_ % 2 == 0 else -1]:
            rates[side].append(in_netns(ns, requests_per_second, server, side, args.requests))
        print(f"round {round_ + 1}: brokered {rates['brokered'][-1]:.1f} req/s, "
              f"direct {rates['direct'][-1]:.1f} req/s", flush=True)  # fmt: skip
    return rates


def report(rates: dict[str, list[float]], args: argparse.Namespace) -> None:
    brokered, direct = (statistics.median(rates[side]) for side in SIDES)
    pairs = [b / d for b, d in zip(rates["brokered"], rates["direct"], strict=True)]
    print(f"guests: 1 vCPU each; {args.requests} sequential HTTPS requests per round, each on "
          f"a new connection, x {args.rounds} rounds, alternating")  # fmt: skip
    print(f"{'brokered (proxy, TLS intercepted, header injected)':52}{brokered:8.1f} req/s")
    print(f"{'direct (same guest image, no mediation)':52}{direct:8.1f} req/s")
    print(
        f"ratio brokered/direct: {brokered / direct:.2f}x of medians, "
        f"{statistics.median(pairs):.2f}x median of per-pair ratios (target >= 0.7x)"
    )


def run(args: argparse.Namespace) -> None:
    with (
        bench_dir() as root,
        netns() as ns,
        https_upstream(ns, root / "upstream", [ADDRESS]) as (ca_dir, _),
        serving(
            root / "data", ns, {"EMBER_EGRESS_UPSTREAM_CAFILE": str(ca_dir / CA_CERT)}
        ) as server,
    ):
        in_netns(ns, set_up, server, (ca_dir / CA_CERT).read_bytes())
        report(measure(ns, server, args), args)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=40)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
