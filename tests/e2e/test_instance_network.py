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
from ember.testkit.netns import in_netns
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
