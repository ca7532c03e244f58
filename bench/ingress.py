"""Ingress throughput: requests/s and p99 through Ember's Caddy versus straight to the upstream.

Same run, same load generator (wrk, time-bounded), alternating direct and ingress
rounds so machine noise hits both alike. Everything runs inside a network namespace
this script creates: the upstream, a DNS responder standing in for ember/network's,
the ingress Caddy driven by a real IngressManager, and wrk.
First version: the upstream is a process, not a VM. `--upstream python` (default)
is a modest app server, like a guest's; `--upstream caddy` answers as fast as the
proxy itself, so its ratio is the worst case (on 2 shared cores the proxy, the
upstream and wrk compete for CPU). Host->guest TCP throughput needs a VM: not here yet.

    .venv/bin/python -m bench.ingress [--rounds 2] [--seconds 5] [--connections 16]
                                      [--upstream python|caddy]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ember.config import Settings
from ember.ingress import IngressManager, IngressRule, default_caddy_binary
from ember.store import Store

ROOT = Path(__file__).resolve().parent.parent
DNS_RESPONDER = ROOT / "tests" / "ingress" / "dns_responder.py"
DNS_LISTEN = "127.0.0.1:4953"
UPSTREAM = ("127.0.0.2", 8080)
BODY = "hello from the upstream\n"
HOST = "bench.ingress.test"


@dataclass
class Load:
    requests_per_second: float
    p99_ms: float


def sh(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *args], capture_output=True, text=True)


def parse_wrk(output: str) -> Load:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", output)
    if not rps or not p99:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return Load(float(rps.group(1)), float(p99.group(1)) * scale)


def wrk(netns: str, url: str, seconds: int, connections: int, host: str) -> Load:
    done = sh(
        netns, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-H", f"Host: {host}", url,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"wrk failed: {done.stderr}")
    return parse_wrk(done.stdout)


def start_upstream(netns: str, work: Path, kind: str) -> subprocess.Popen[bytes]:
    if kind == "python":  # a modest app server, as a guest's would be
        script = ROOT / "tests" / "ingress" / "upstream.py"
        return subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                sys.executable,
                str(script),
                "bench",
                *map(str, UPSTREAM),
            ]
        )
    return start_caddy_upstream(netns, work)


def start_caddy_upstream(netns: str, work: Path) -> subprocess.Popen[bytes]:
    config = {
        "admin": {"disabled": True},
        "apps": {"http": {"servers": {"upstream": {
            "listen": [f"{UPSTREAM[0]}:{UPSTREAM[1]}"],
            "automatic_https": {"disable": True},
            "routes": [{"handle": [
                {"handler": "static_response", "status_code": 200, "body": BODY}
            ]}],
        }}}},
    }  # fmt: skip
    (work / "upstream.json").write_text(json.dumps(config))
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, str(default_caddy_binary()), "run", "--config",
         str(work / "upstream.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_http(netns: str, url: str, host: str) -> None:
    for _ in range(200):
        done = sh(netns, "curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}",
                  "-H", f"Host: {host}", url)  # fmt: skip
        if done.stdout == "200":
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} does not answer")


async def run(args: argparse.Namespace) -> None:
    netns = f"ember-bench-{secrets.token_hex(3)}"
    work = Path(tempfile.mkdtemp(prefix="ember-bench-ingress-", dir="/tmp"))
    subprocess.run(["ip", "netns", "add", netns], check=True)
    processes: list[subprocess.Popen[bytes]] = []
    manager: IngressManager | None = None
    try:
        sh(netns, "ip", "link", "set", "lo", "up")
        (work / "records.json").write_text(json.dumps({"bench.ember.internal": UPSTREAM[0]}))
        processes.append(subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(DNS_RESPONDER), DNS_LISTEN,
             str(work / "records.json")],
        ))  # fmt: skip
        processes.append(start_upstream(netns, work, args.upstream))
        settings = Settings(
            data_dir=work / "data", runtime_dir=work / "run",
            ingress_listen_address="127.0.0.1", network_dns_listen=DNS_LISTEN,
        )  # fmt: skip
        manager = IngressManager(
            Store(settings.db_path), settings, lambda ref: ref == "bench",
            command_prefix=["ip", "netns", "exec", netns],
        )  # fmt: skip
        rule = {"match": {"hostname": HOST}, "target": {"instance": "bench", "port": UPSTREAM[1]}}
        await manager.create("bench", [IngressRule.model_validate(rule)])
        direct_url = f"http://{UPSTREAM[0]}:{UPSTREAM[1]}/"
        ingress_url = "http://127.0.0.1:80/"
        wait_http(netns, direct_url, HOST)
        wait_http(netns, ingress_url, HOST)
        measure(netns, direct_url, ingress_url, args)
    finally:
        if manager is not None:
            await manager.shutdown_proxy()
        for process in processes:
            process.kill()
            process.wait()
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(work, ignore_errors=True)


def measure(netns: str, direct_url: str, ingress_url: str, args: argparse.Namespace) -> None:
    direct: list[Load] = []
    ingress: list[Load] = []
    for _ in range(args.rounds):
        direct.append(wrk(netns, direct_url, args.seconds, args.connections, HOST))
        ingress.append(wrk(netns, ingress_url, args.seconds, args.connections, HOST))
    d_rps = statistics.median(x.requests_per_second for x in direct)
    i_rps = statistics.median(x.requests_per_second for x in ingress)
    d_p99 = statistics.median(x.p99_ms for x in direct)
    i_p99 = statistics.median(x.p99_ms for x in ingress)
    print(
        f"upstream {args.upstream}; wrk: 1 thread, {args.connections} connections, "
        f"{args.seconds}s x {args.rounds} rounds"
    )
    print(f"{'':10}{'req/s':>12}{'p99 ms':>10}")
    print(f"{'direct':10}{d_rps:12.0f}{d_p99:10.2f}")
    print(f"{'ingress':10}{i_rps:12.0f}{i_p99:10.2f}")
    print(f"ratio ingress/direct: {i_rps / d_rps:.2f}x req/s (target >= 0.8x), "
          f"p99 {i_p99 / d_p99:.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--upstream", choices=["python", "caddy"], default="python",
        help="python: a modest app server (like a guest's); caddy: a static answer as fast "
        "as the proxy itself, so the ratio shows the proxy's whole cost",
    )  # fmt: skip
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
