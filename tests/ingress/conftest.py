"""A network namespace per test with a DNS responder and stand-in instances, and a manager.

Everything that carries traffic (Caddy, the responder, the upstreams, curl) runs inside
the namespace the fixture creates, as the network rule requires.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ember.config import Settings
from ember.ingress import IngressManager
from ember.store import Store
from tests.conftest import scratch_dir

HERE = Path(__file__).parent
DNS_LISTEN = "127.0.0.1:4953"
# Instances the tests route to: where each "instance" answers (or does not).
RECORDS = {
    "web": "127.0.0.2",  # answers
    "api": "127.0.0.3",  # answers
    "stopped": "127.0.0.4",  # nothing listens: connection refused
    "gone": "10.77.0.99",  # on a link where nobody answers ARP: a dial timeout
}
UPSTREAM_PORT = 8080


@dataclass
class Netns:
    name: str
    work: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *args], capture_output=True, text=True, check=check)

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [*self.prefix, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.processes.append(process)
        return process

    def curl(self, url: str, *options: str) -> tuple[int, str, dict[str, str]]:
        """Status, body and response headers of one request made inside the namespace."""
        headers_file = self.work / f"headers-{secrets.token_hex(4)}"
        done = self.run(
            "curl", "-sS", "-m", "20", "-D", str(headers_file), "-o", "-",
            "-w", "\n%{http_code}", *options, url, check=False,
        )  # fmt: skip
        body, _, status = done.stdout.rpartition("\n")
        if done.returncode:
            print("curl:", done.stderr)
        headers = {}
        for line in headers_file.read_text().splitlines()[1:] if headers_file.exists() else []:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        return int(status or 0), body.strip(), headers

    def wait_port(self, address: str, port: int) -> None:
        probe = f"import socket; socket.create_connection(('{address}', {port}), 1)"
        for _ in range(100):
            if self.run(sys.executable, "-c", probe, check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"nothing listens on {address}:{port}")


@dataclass
class World:
    netns: Netns
    records_file: Path

    def set_record(self, name: str, address: str) -> None:
        records = json.loads(self.records_file.read_text())
        records[f"{name}.ember.internal"] = address
        self.records_file.write_text(json.dumps(records))

    def upstream(self, name: str, address: str, port: int = UPSTREAM_PORT) -> None:
        self.netns.spawn(sys.executable, str(HERE / "upstream.py"), name, address, str(port))
        self.netns.wait_port(address, port)


@pytest.fixture
def netns() -> Iterator[Netns]:
    name = f"ember-ingress-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    with scratch_dir() as work:
        ns = Netns(name, work)
        try:
            ns.run("ip", "link", "set", "lo", "up")
            # A link whose far end has no address: like a stopped VM's TAP, ARP goes unanswered.
            ns.run("ip", "link", "add", "deadend0", "type", "veth", "peer", "name", "deadend1")
            ns.run("ip", "addr", "add", "10.77.0.1/24", "dev", "deadend0")
            ns.run("ip", "link", "set", "deadend0", "up")
            ns.run("ip", "link", "set", "deadend1", "up")
            yield ns
        finally:
            for process in ns.processes:
                process.kill()
                process.wait()
            subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.fixture
def world(netns: Netns) -> World:
    records_file = netns.work / "records.json"
    records_file.write_text(json.dumps({f"{k}.ember.internal": v for k, v in RECORDS.items()}))
    world = World(netns, records_file)
    netns.spawn(sys.executable, str(HERE / "dns_responder.py"), DNS_LISTEN, str(records_file))
    world.upstream("web", RECORDS["web"])
    world.upstream("api", RECORDS["api"])
    return world


def ingress_settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        runtime_dir=data_dir.parent / "run",
        ingress_listen_address="127.0.0.1",
        network_dns_listen=DNS_LISTEN,
        ingress_dial_timeout_seconds=1.0,
    )


def make_manager(settings: Settings, netns: Netns) -> IngressManager:
    return IngressManager(
        Store(settings.db_path),
        settings,
        lambda ref: ref in RECORDS,
        command_prefix=netns.prefix,
    )


def caddy_pids(bootstrap: Path) -> list[int]:
    """Every process running Caddy with this data dir's bootstrap config."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and str(bootstrap).encode() in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
async def manager(world: World) -> AsyncIterator[IngressManager]:
    settings = ingress_settings(world.netns.work / "data")
    manager = make_manager(settings, world.netns)
    await manager.open()
    try:
        yield manager
    finally:
        await manager.shutdown_proxy()
        assert caddy_pids(manager.daemon.bootstrap_file) == [], "a Caddy outlived the test"
