"""Autoscale and calendar schedules with real VMs: one Ember (with its Caddy) in a
namespace this module made. A group made and sized by its autoscaler grows to its
max_size under a CPU-burning load sent through the balancer, and shrinks back to its
min_size when the load stops, every step recorded with its reason (read through the
API and `ember group inspect`); schedules stop, start and exec in an instance."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ember.testkit.ember_server import EmberServer
from ember.testkit.image import BuiltImage, build_image, busybox_layer, directory, file
from ember.testkit.netns import in_netns
from tests.cli.conftest import cli_env, run_cli
from tests.conftest import push_to_ember, running_server

pytestmark = pytest.mark.vm
PORT = 8000
# Burns the guest's CPU for 3 s per request (busybox sh: forks `date` in a loop).
BURN = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
end=$(( $(date +%s) + 3 ))
while [ "$(date +%s)" -lt "$end" ]; do :; done
echo burnt
"""
SERVE = ["/bin/sh", "-c", "exec httpd -f -p 8080 -h /www"]
MAX = 3
# Grow at a mean CPU demand of 50% or more, shrink under 20% (a burning guest's vCPU
# wants a core all the time, an idle one almost never: ember/groups/autoscale/cpu.py).
CPU_POLICY = {
    "name": "cpu",
    "metric": "cpu",
    "adjustment_type": "change",
    "steps": [
        {"adjustment": -1, "upper_bound": 20},
        {"adjustment": 0, "lower_bound": 20, "upper_bound": 50},
        {"adjustment": 1, "lower_bound": 50},
    ],
}


def guest_image() -> BuiltImage:
    www = {"www": directory(), "www/cgi-bin": directory(), "www/cgi-bin/burn": file(BURN, 0o755)}
    return build_image([busybox_layer(), www], cmd=SERVE)


@pytest.fixture(scope="module")
def server(ns: str) -> Iterator[EmberServer]:
    with running_server(ns, env={"EMBER_STOP_TIMEOUT_SECONDS": "3"}) as server:
        yield server


@pytest.fixture(scope="module")
def image(ns: str, server: EmberServer) -> str:
    return in_netns(ns, push_to_ember, server, guest_image(), "autoscale", "burn")


def api(server: EmberServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.token()}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=120)


def running(client: httpx.Client, group: str) -> list[str]:
    members = client.get(f"/service-groups/{group}").json()["instances"]
    return sorted(m["name"] for m in members if m["state"] == "Running")


def until(what: str, check: Any, timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(1)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


class Load:
    """`clients` loops of requests to the burning CGI through the group's balancer."""

    def __init__(self, host: str, clients: int) -> None:
        self.host, self.stopped = host, threading.Event()
        self.threads = [threading.Thread(target=self._loop) for _ in range(clients)]
        self.statuses: list[str] = []

    def _loop(self) -> None:
        while not self.stopped.is_set():
            done = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60",
                 "-H", f"Host: {self.host}", f"http://127.0.0.1:{PORT}/cgi-bin/burn"],
                capture_output=True, text=True,
            )  # fmt: skip
            self.statuses.append(done.stdout)
            if done.stdout != "200":
                time.sleep(0.5)  # a member not listening yet, or none awake

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join()


def test_grows_to_max_under_cpu_load_and_shrinks_back(
    ns: str, server: EmberServer, image: str
) -> None:
    in_netns(ns, _grows_and_shrinks, server, image)


def _grows_and_shrinks(server: EmberServer, image: str) -> None:
    with api(server) as client:
        created = client.post("/service-groups", json={
            "name": "auto", "services": [{"port": PORT, "destination_port": 8080}],
            "domains": [{"name": "auto.test"}]})  # fmt: skip
        assert created.status_code == 201, created.text
        config = {"min_size": 1, "max_size": MAX, "warmup_time_ms": 8000,
                  "cooldown_time_ms": 5000, "policies": [CPU_POLICY],
                  "create_args": {"image": image, "vcpus": 1, "size": "256MB"}}  # fmt: skip
        put = client.put("/service-groups/auto/autoscale", json=config)
        assert put.status_code == 200, put.text
        # Below min_size: the autoscaler makes the first member itself.
        until("the first member", lambda: len(running(client, "auto")) == 1)
        with Load("auto.test", clients=6) as load:
            until(f"{MAX} members under load", lambda: len(running(client, "auto")) == MAX)
            time.sleep(15)  # still loaded past a cooldown: never more than max_size
            members = client.get("/service-groups/auto").json()["instances"]
            assert len(members) == MAX
        assert "200" in load.statuses
        until("back to 1 member", lambda: len(running(client, "auto")) == 1)
        decisions = client.get("/service-groups/auto/autoscale/decisions").json()[::-1]
    steps = [(d["action"], d["size_before"], d["size_after"]) for d in decisions]
    assert steps[0] == ("scale_out", 0, 1), decisions  # min_size
    assert ("scale_out", 1, 2) in steps and ("scale_out", 2, 3) in steps, decisions
    assert ("scale_in", 3, 2) in steps and ("scale_in", 2, 1) in steps, decisions
    assert steps.index(("scale_out", 2, 3)) < steps.index(("scale_in", 3, 2))
    for decision in decisions:
        assert decision["reason"], decision
        if decision["action"] != "blocked" and decision["size_before"]:
            assert decision["reason"].startswith("policy 'cpu': cpu "), decision
    # `ember group inspect` shows the configuration and the decisions with their reasons.
    shown = run_cli(["group", "inspect", "auto"], cli_env(server))
    assert shown.code == 0, shown.err
    autoscale = json.loads(shown.out)["autoscale"]
    assert autoscale["max_size"] == MAX
    assert [d["reason"] for d in autoscale["decisions"]] == [d["reason"] for d in decisions[::-1]]


def test_members_are_clones_of_a_template(ns: str, server: EmberServer, image: str) -> None:
    in_netns(ns, _clones_join, server, image)


def _clones_join(server: EmberServer, image: str) -> None:
    """`create_args: {"template": ...}`: the autoscaler's first member (min_size) is a
    clone of the template, a member of the group served through the balancer. Two VMs
    one after the other: the template's builder, then the clone."""
    with api(server) as client:
        made = client.post("/templates", json={"name": "burn-tpl", "image": image,
                                                "vcpus": 1, "size": "256MB"})  # fmt: skip
        assert made.status_code == 201, made.text
        template = made.json()
        created = client.post("/service-groups", json={
            "name": "cloned", "services": [{"port": PORT, "destination_port": 8080}],
            "domains": [{"name": "cloned.test"}]})  # fmt: skip
        assert created.status_code == 201, created.text
        config = {"min_size": 1, "max_size": 1, "create_args": {"template": "burn-tpl"}}
        put = client.put("/service-groups/cloned/autoscale", json=config)
        assert put.status_code == 200, put.text
        assert put.json()["create_args"] == {"template": template["id"]}
        [member] = until("the cloned member", lambda: running(client, "cloned"), 300)
        assert f"instance {member!r}" in client.get(f"/templates/{template['id']}").json()["clones"]
        [decision] = client.get("/service-groups/cloned/autoscale/decisions").json()
        assert (decision["action"], decision["instances"]) == ("scale_out", [member])
        answer = subprocess.run(
            ["curl", "-s", "--max-time", "60", "-H", "Host: cloned.test",
             f"http://127.0.0.1:{PORT}/cgi-bin/burn"], capture_output=True, text=True,
        )  # fmt: skip
        assert answer.stdout.strip() == "burnt"
        assert client.delete("/service-groups/cloned/autoscale").status_code in (200, 204)
        assert client.delete(f"/instances/{member}").status_code in (200, 204)
        assert client.delete("/templates/burn-tpl").status_code == 204


def at(seconds: float) -> str:
    """A calendar expression for one moment `seconds` from now (UTC)."""
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def test_schedules_stop_exec_and_start_an_instance(
    ns: str, server: EmberServer, image: str
) -> None:
    in_netns(ns, _schedules_act, server, image)


def _schedules_act(server: EmberServer, image: str) -> None:
    with api(server) as client:
        created = client.post("/instances", json={
            "name": "sched", "image": image, "vcpus": 1, "size": "256MB",
            "schedules": [{"name": "mark", "when": at(8), "action": "exec",
                           "args": ["/bin/sh", "-c", "echo marked > /tmp/mark"]}]})  # fmt: skip
        assert created.status_code == 201, created.text
        first = created.json()["schedules"][0]
        assert first["next_at"] > time.time() and first["when"].endswith("UTC")

        def ran(name: str) -> dict[str, Any] | None:
            record = client.get("/instances/sched").json()
            found = [s for s in record.get("schedules", []) if s["name"] == name]
            return found[0] if found and found[0].get("last_result") else None

        assert until("the exec schedule", lambda: ran("mark"), 120)["last_result"] == "exit 0"
        off = client.patch("/instances/sched", json={"schedules": [
            {"name": "off", "when": at(5), "action": "stop"}]})  # fmt: skip
        assert off.status_code == 200, off.text
        until(
            "stopped by its schedule",
            lambda: client.get("/instances/sched").json()["state"] == "Stopped",
            120,
        )
        assert ran("off")["last_result"] == "ok"  # type: ignore[index]
        on = client.patch("/instances/sched", json={"schedules": [
            {"name": "on", "when": at(5), "action": "start"}]})  # fmt: skip
        assert on.status_code == 200, on.text
        until(
            "started by its schedule",
            lambda: client.get("/instances/sched").json()["state"] == "Running",
            180,
        )
        assert client.delete("/instances/sched").status_code == 204
