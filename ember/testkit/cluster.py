"""A cluster on one machine for tests and benchmarks: a hub namespace with a bridge
(where gateways run), and per host a namespace on that bridge holding one etcd member
and one `ember serve`. Traffic stays inside these namespaces."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ember.api.auth import mint_token
from ember.testkit.ember_server import EmberServer
from ember.testkit.etcd import EtcdMember, start_cluster
from ember.testkit.netns import in_netns, netns, sh

SUBNET = "10.77.0"
HUB_IP = f"{SUBNET}.1"
HOST_PORT = 4973
GATEWAY_PORT = 4980  # the first gateway's; the next ones count up


@dataclass
class Gateway:
    hub: str
    port: int
    endpoints: list[str]
    secret_file: Path
    log: Path
    lease_ttl: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HUB_IP}:{self.port}"

    def start(self) -> Gateway:
        etcd = [arg for url in self.endpoints for arg in ("--etcd", url)]
        command = ["ip", "netns", "exec", self.hub, sys.executable, "-m", "ember.cli.main",
                   "gateway", *etcd, "--listen", f"{HUB_IP}:{self.port}",
                   "--secret-file", str(self.secret_file),
                   "--lease-ttl", str(self.lease_ttl)]  # fmt: skip
        out = open(self.log, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=out, stderr=out)
        wait_until(lambda: in_netns(self.hub, _answers, f"{self.url}/health"), "gateway up")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class Cluster:
    hub: str
    hosts: dict[str, EmberServer]  # host name -> its server
    namespaces: dict[str, str]  # host name -> its namespace
    etcd: dict[str, EtcdMember]
    secret: bytes
    gateways: list[Gateway] = field(default_factory=list)

    def token(self) -> str:
        return mint_token(self.secret, "test", 3600)

    def address(self, host: str) -> str:
        return f"http://{self.etcd[host].ip}:{HOST_PORT}"

    def link(self, host: str, up: bool) -> None:
        """Cut (or restore) the host's only link: its VMs, server and etcd member go on."""
        sh(f"ip -n {self.hub} link set cl-{host} {'up' if up else 'down'}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(predicate: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached: {what}")
        time.sleep(0.2)


@contextmanager
def cluster(
    root: Path, size: int = 3, *, gateways: int = 1, lease_ttl: int = 3
) -> Iterator[Cluster]:
    """`size` hosts (h1..hN) at 10.77.0.11.. on a bridge in a hub namespace at 10.77.0.1,
    and `gateways` gateways in the hub; all torn down afterwards."""
    with ExitStack() as stack:
        hub = stack.enter_context(netns())
        sh(f"ip -n {hub} link add clbr type bridge && ip -n {hub} addr add {HUB_IP}/24 dev clbr"
           f" && ip -n {hub} link set clbr up")  # fmt: skip
        names = [f"h{i}" for i in range(1, size + 1)]
        namespaces, members = {}, {}
        for i, name in enumerate(names, start=1):
            ns = namespaces[name] = stack.enter_context(netns())
            ip = f"{SUBNET}.{10 + i}"
            sh(f"ip -n {hub} link add cl-{name} type veth peer name eth0 netns {ns}"
               f" && ip -n {hub} link set cl-{name} master clbr up"
               f" && ip -n {ns} addr add {ip}/24 dev eth0"
               f" && ip -n {ns} link set eth0 up")  # fmt: skip
            members[name] = EtcdMember(f"e{name}", root / name / "etcd", ip=ip, client_port=2379,
                                       peer_port=2380, netns=ns)  # fmt: skip
        for member in members.values():
            stack.callback(member.stop)
        start_cluster(list(members.values()))
        secret = secrets.token_hex(32).encode()
        secret_file = root / "cluster.secret"
        secret_file.write_bytes(secret)
        servers: dict[str, EmberServer] = {}
        for name in names:
            data = root / name / "data"
            data.mkdir(parents=True)
            (data / "jwt.secret").write_bytes(secret)  # the cluster's shared secret
            # This host's etcd member first, the others after it.
            local = members[name].client_url
            endpoints = [local, *(m.client_url for m in members.values() if m.client_url != local)]
            env = {
                "EMBER_LISTEN": f"0.0.0.0:{HOST_PORT}",
                "EMBER_RUNTIME_DIR": str(root / name / "run"),
                "EMBER_CLUSTER_ETCD_ENDPOINTS": json.dumps(endpoints),
                "EMBER_CLUSTER_ADVERTISE": f"http://{members[name].ip}:{HOST_PORT}",
                "EMBER_CLUSTER_HOST_NAME": name,
                "EMBER_CLUSTER_LEASE_TTL_SECONDS": str(lease_ttl),
                # Hosts pull from each other's registries and the gateways' over plain
                # HTTP (a private net).
                "EMBER_INSECURE_REGISTRIES": json.dumps(
                    [f"{m.ip}:{HOST_PORT}" for m in members.values()]
                    + [f"{HUB_IP}:{GATEWAY_PORT + n}" for n in range(gateways)]
                ),
                **{k: v for k, v in os.environ.items() if k == "EMBER_SYSTEM_DIR"},
            }
            server = EmberServer(data, port=HOST_PORT, env=env, netns=namespaces[name])
            servers[name] = server
            server.start()
            stack.callback(server.stop)
            stack.callback(server.clean_up)  # before the stop (callbacks run in reverse)
        built = Cluster(hub, servers, namespaces, members, secret)
        endpoints = [m.client_url for m in members.values()]
        for n in range(gateways):
            log = root / f"gateway{n}.log"
            gateway = Gateway(hub, GATEWAY_PORT + n, endpoints, secret_file, log, lease_ttl).start()
            stack.callback(gateway.stop)
            built.gateways.append(gateway)
        yield built
