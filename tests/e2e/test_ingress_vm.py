"""Ingress to real VMs, end to end: Ember (with its Caddy and DNS) inside a namespace the
test made; requests through the ingress with curl from inside that namespace."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from ember.testkit.netns import in_netns
from tests.conftest import push_to_ember, running_server
from tests.e2e.test_instance_network import api, create_running

pytestmark = pytest.mark.vm
HELLO = "hello from ember\n"
SECRET = "s3cret-" + "x" * 30


def curl(*args: str) -> tuple[int, str]:
    """HTTP status and body of a curl run (in the caller's namespace)."""
    proc = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True, text=True,
    )  # fmt: skip
    body, _, status = proc.stdout.rpartition("\n")
    return int(status or 0), body


def until_ok(*args: str) -> tuple[int, str]:
    answer = (0, "")
    for _ in range(50):
        answer = curl(*args)
        if answer[0] == 200:
            break
        time.sleep(0.2)
    return answer


def set_up(server: EmberServer, ca_file: str) -> dict[str, Any]:
    image = push_to_ember(server, hello_image(), "hello", "ingress")
    with api(server) as client:
        create_running(client, image, "web")
        web = {"instance": "web", "port": 8080}
        rules = [
            {"match": {"hostname": "web.test", "port": 80}, "target": web},
            {"match": {"hostname": "{instance}.apps.test", "port": 80},
             "target": {"instance": "{instance}", "port": 8080}},
            {"match": {"hostname": "secure.test", "port": 443}, "target": web,
             "tls": True, "redirect_http": True},
            {"match": {"hostname": "auth.test", "port": 80}, "target": web,
             "request_header_auth": {"header": "X-Ember-Key", "value": SECRET}},
        ]  # fmt: skip
        created = client.post("/ingresses", json={"name": "front", "rules": rules})
        assert created.status_code == 201, created.text
        clash = client.post("/ingresses", json={"name": "again", "rules": rules[:1]})
        unknown = client.post(
            "/ingresses",
            json={"name": "ghost", "rules": [{"match": {"hostname": "g.test"},
                                               "target": {"instance": "ghost", "port": 80}}]},
        )  # fmt: skip
        Path(ca_file).write_bytes(client.get("/ingresses/ca.pem").content)
        return {"clash": clash.status_code, "unknown": unknown.status_code}


def routes(ca_file: str) -> dict[str, tuple[int, str]]:
    resolve = "--resolve", "secure.test:443:127.0.0.1"
    return {
        "literal": until_ok("-H", "Host: web.test", "http://127.0.0.1/"),
        "pattern": curl("-H", "Host: web.apps.test", "http://127.0.0.1/"),
        "unknown-pattern": curl("-H", "Host: nobody.apps.test", "http://127.0.0.1/"),
        "redirect": curl("-H", "Host: secure.test", "-o", "/dev/null", "http://127.0.0.1/"),
        "auth-missing": curl("-H", "Host: auth.test", "http://127.0.0.1/"),
        "auth-ok": curl("-H", "Host: auth.test", "-H", f"X-Ember-Key: {SECRET}", "http://127.0.0.1/"),
        "tls": curl(*resolve, "--cacert", ca_file, "https://secure.test/"),
    }  # fmt: skip


def stop_start(server: EmberServer) -> str:
    with api(server) as client:
        client.post("/instances/web/stop").raise_for_status()
        stopped = curl("-H", "Host: web.test", "http://127.0.0.1/")[0]
        client.post("/instances/web/start").raise_for_status()
        client.get("/instances/web/wait", params={"state": "Running", "timeout": "90s"})
    return f"{stopped}"


def standby_restore(server: EmberServer) -> str:
    with api(server) as client:
        client.post("/instances/web/standby").raise_for_status()
        restored = client.post("/instances/web/restore")
        restored.raise_for_status()
    return str(restored.json()["state"])


def delete_web(server: EmberServer) -> tuple[int, float]:
    with api(server) as client:
        client.delete("/instances/web").raise_for_status()
    started = time.monotonic()
    status = curl("-H", "Host: web.test", "http://127.0.0.1/")[0]
    return status, time.monotonic() - started


def delete_ingresses(server: EmberServer) -> None:
    with api(server) as client:
        for ingress in client.get("/ingresses").json():
            client.delete(f"/ingresses/{ingress['id']}").raise_for_status()


def caddy_processes(data_dir: Path) -> list[str]:
    proc = subprocess.run(["pgrep", "-af", "caddy"], capture_output=True, text=True)
    return [line for line in proc.stdout.splitlines() if str(data_dir) in line]


def test_ingress_routes_to_vms_through_restarts_and_deletes(ns: str, tmp_path: Path) -> None:
    ca_file = str(tmp_path / "ca.pem")
    with running_server(ns) as server:
        refused = in_netns(ns, set_up, server, ca_file)
        assert refused == {"clash": 409, "unknown": 400}
        first = in_netns(ns, routes, ca_file)
        assert first["literal"] == (200, HELLO)
        assert first["pattern"] == (200, HELLO)
        assert first["unknown-pattern"][0] in (502, 503)
        assert first["redirect"][0] == 308
        assert first["auth-missing"][0] == 403
        assert first["auth-ok"] == (200, HELLO)
        assert first["tls"] == (200, HELLO)
        # A stopped instance answers at once, and its route works again after a start.
        assert in_netns(ns, stop_start, server) in ("502", "503")
        assert in_netns(ns, routes, ca_file)["literal"] == (200, HELLO)
        # A standby and restore keep the route (the guest keeps its address).
        assert in_netns(ns, standby_restore, server) == "Running"
        assert in_netns(ns, routes, ca_file)["literal"] == (200, HELLO)
        # Ember restarts: the VM and Caddy keep running, routes keep working.
        server.stop()
        server.start()
        assert in_netns(ns, routes, ca_file)["tls"] == (200, HELLO)
        status, _ = in_netns(ns, delete_web, server)
        assert status in (502, 503)  # curl gives up after 10 s: an answer means no hang
        in_netns(ns, delete_ingresses, server)
        assert caddy_processes(server.data_dir) == []
    leftovers = subprocess.run(
        ["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True
    ).stdout
    assert "tap-" not in leftovers
