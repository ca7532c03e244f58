"""Instances on the network, end to end: an Ember server inside a namespace the test
made, driven through its API from inside that namespace (as the architecture note
requires: no traffic to guests from the host's own namespace)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from ember.testkit.netns import in_netns, sh
from tests.conftest import fetch, push_to_ember, running_server

pytestmark = pytest.mark.vm
SERVE = ["/hello", "serve", "8080"]


@pytest.fixture(scope="module")
def server(ns: str) -> Iterator[EmberServer]:
    with running_server(ns) as server:
        yield server


def api(server: EmberServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.token()}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def create_running(client: httpx.Client, image: str, name: str, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "image": image, "vcpus": 1, "size": "256MB", "cmd": SERVE, **fields}
    created = client.post("/instances", json=body)
    assert created.status_code == 201, created.text
    waited = client.get(f"/instances/{name}/wait", params={"state": "Running", "timeout": "90s"})
    assert waited.json()["state"] == "Running", waited.text
    instance: dict[str, Any] = client.get(f"/instances/{name}").json()
    return instance


def guest_run(client: httpx.Client, name: str, *command: str) -> int:
    """Exit code of a command in the guest, through the official exec protocol."""
    from hypeman import Hypeman
    from hypeman.lib.exec import exec as guest_exec

    official = Hypeman(base_url=str(client.base_url), api_key=client.headers["authorization"][7:])
    return int(guest_exec(official, name, list(command), wait_for_agent=30).exit_code)


def scenario(server: EmberServer) -> dict[str, Any]:
    image = push_to_ember(server, hello_image(), "hello", "net")
    with api(server) as client:
        a = create_running(client, image, "web-a", network={"bandwidth_download": "10MB/s"})
        b = create_running(client, image, "web-b")
        out: dict[str, Any] = {"a": a, "b": b}
        out["answer_a"] = fetch(a["network"]["ip"])
        out["answer_b"] = fetch(b["network"]["ip"])
        # Port isolation: a cannot reach b; both reach the gateway (Ember's DNS lives there).
        out["a_to_b"] = guest_run(client, "web-a", "nc", "-w", "2", b["network"]["ip"], "8080")
        out["a_resolves_itself"] = guest_run(client, "web-a", "nslookup", "web-a.ember.internal")
        stats = client.get("/instances/web-a/stats").json()
        out["stats"] = stats
        # Stop and start keep the lease and the route.
        client.post("/instances/web-a/stop").raise_for_status()
        client.post("/instances/web-a/start").raise_for_status()
        client.get("/instances/web-a/wait", params={"state": "Running", "timeout": "90s"})
        out["a_after_restart"] = client.get("/instances/web-a").json()
        out["answer_a_again"] = fetch(a["network"]["ip"])
        offline = client.post(
            "/instances",
            json={"name": "offline", "image": image, "vcpus": 1, "size": "256MB",
                  "cmd": SERVE, "network": {"enabled": False}},
        )  # fmt: skip
        out["offline"] = offline.json()
        client.delete("/instances/offline").raise_for_status()
    return out


def test_instances_get_addresses_are_isolated_and_keep_them(server: EmberServer, ns: str) -> None:
    out = in_netns(ns, scenario, server)
    a, b = out["a"], out["b"]
    assert a["network"]["enabled"] and a["network"]["name"] == "default"
    assert a["network"]["ip"] != b["network"]["ip"] and a["network"]["mac"] != b["network"]["mac"]
    assert a["network"]["bandwidth_download"] == "10MB/s"
    assert out["answer_a"] == out["answer_b"] == "hello from ember\n"
    assert out["a_to_b"] != 0, "VM-to-VM traffic must be blocked by port isolation"
    assert out["a_resolves_itself"] == 0
    assert out["stats"]["network_rx_bytes"] > 0 and out["stats"]["network_tx_bytes"] > 0
    assert out["a_after_restart"]["network"]["ip"] == a["network"]["ip"]
    assert out["answer_a_again"] == "hello from ember\n"
    assert out["offline"]["network"] == {"enabled": False, "ip": None, "mac": None}


def neighbour(ip: str) -> str:
    """The host's ARP entry for `ip` on the bridge (call inside the namespace)."""
    return sh(f"ip neigh show {ip} dev ember0").strip()


# Prints the sender MAC of the first gratuitous ARP (sender = target address) for argv[1]
# seen on the bridge, after a "ready" line once it listens.
GARP_LISTENER = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("ember0", 0))
s.settimeout(120)
ip = socket.inet_aton(sys.argv[1])
print("ready", flush=True)
while True:
    arp = s.recv(128)[14:42]
    if arp[14:18] == ip and arp[24:28] == ip:
        print(arp[8:14].hex(":"), flush=True)
        break
"""


def serve_and_delete(server: EmberServer, image: str) -> tuple[dict[str, Any], str]:
    with api(server) as client:
        old = create_running(client, image, "old")
        answer = fetch(old["network"]["ip"])  # the host now maps the IP to old's MAC
        client.delete("/instances/old").raise_for_status()
    return old["network"], answer


def create_on_the_same_address(server: EmberServer, image: str) -> dict[str, Any]:
    with api(server) as client:
        new = create_running(client, image, "new")["network"]
    return {"new": new, "entry": neighbour(new["ip"]), "answer": fetch(new["ip"], tries=5)}


def test_a_new_vm_on_a_deleted_vms_address_answers_at_once(server: EmberServer, ns: str) -> None:
    """The host must not send a deleted VM's address to the deleted VM's MAC once a new VM
    has it (it did for ~40 s, until the neighbour entry went stale); the new guest also
    announces itself at boot (gratuitous ARP)."""
    image = in_netns(ns, push_to_ember, server, hello_image(), "hello", "reuse")
    # Another port keeps the bridge's carrier up, as other VMs would: a bridge that loses
    # its last port flushes its neighbours, which would hide the stale entry.
    sh(f"ip -n {ns} link add keep0 type veth peer name keep1")
    sh(f"ip -n {ns} link set keep0 master ember0 up && ip -n {ns} link set keep1 up")
    try:
        old, answer_old = in_netns(ns, serve_and_delete, server, image)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", GARP_LISTENER, old["ip"]],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
            out = in_netns(ns, create_on_the_same_address, server, image)
            announced_by = listener.stdout.readline().strip()
        finally:
            listener.kill()
            listener.wait()
    finally:
        sh(f"ip -n {ns} link del keep0")
    new = out["new"]
    assert new["ip"] == old["ip"] and new["mac"] != old["mac"]
    assert answer_old == "hello from ember\n"
    assert old["mac"] not in out["entry"], out["entry"]
    assert out["answer"] == "hello from ember\n"
    assert announced_by == new["mac"]


def test_delete_and_restart_leave_nothing_behind(server: EmberServer, ns: str) -> None:
    def leftovers() -> str:
        return subprocess.run(
            ["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True
        ).stdout

    def delete_all() -> None:
        with api(server) as client:
            for inst in client.get("/instances").json():
                client.delete(f"/instances/{inst['id']}").raise_for_status()

    in_netns(ns, delete_all)
    links = leftovers()
    assert "tap-" not in links and "ifb-" not in links
    assert "ember0" in links  # the network stays while the server runs
    server.stop()
    env = {**os.environ, "EMBER_DATA_DIR": str(server.data_dir)}
    uninstall = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "ember.cli.main", "network",
         "uninstall", "--json"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert uninstall.returncode == 0, uninstall.stderr
    assert "ember0" not in leftovers()
    tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                            capture_output=True, text=True).stdout  # fmt: skip
    assert "ember" not in tables
    leases = sqlite3.connect(server.data_dir / "ember.db").execute(
        "SELECT count(*) FROM network_leases"
    )
    assert leases.fetchone()[0] == 0
