"""Service groups with real VMs: one Ember (with its Caddy) in a namespace this module
made, guests running busybox httpd with a CGI that can be slow, requests with curl
from inside the namespace. The tests run in order and pass VMs on (few, small)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from ember.instances.stopreason import StopReason
from ember.testkit.ember_server import EmberServer
from ember.testkit.image import BuiltImage, build_image, busybox_layer, directory, file
from ember.testkit.netns import in_netns
from tests.cli.conftest import cli_env, run_cli
from tests.conftest import push_to_ember, running_server

pytestmark = pytest.mark.vm
PORT = 8000
# Answers "<name> <boot id>": who served, and whether its memory is the one it had
# (a restored standby keeps the boot id; a new boot gets another).
CGI = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
[ "$QUERY_STRING" = slow ] && sleep 4
echo "$(cat /www/who) $(cat /proc/sys/kernel/random/boot_id)"
"""
SERVE = ["/bin/sh", "-c", "echo $WHO > /www/who && exec httpd -f -p 8080 -h /www"]


def guest_image() -> BuiltImage:
    www = {"www": directory(), "www/cgi-bin": directory(), "www/cgi-bin/who": file(CGI, 0o755)}
    return build_image([busybox_layer(), www], cmd=SERVE)


@pytest.fixture(scope="module")
def server(ns: str) -> Iterator[EmberServer]:
    env = {"EMBER_STOP_TIMEOUT_SECONDS": "3", "EMBER_GUEST_MEMORY_FILE": "always"}
    with running_server(ns, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def image(ns: str, server: EmberServer) -> str:
    return in_netns(ns, push_to_ember, server, guest_image(), "groups", "web")


def api(server: EmberServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.token()}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=120)


def group(client: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "services": [{"port": PORT, "destination_port": 8080}],
            "domains": [{"name": f"{name}.test"}], **fields}  # fmt: skip
    created = client.post("/service-groups", json=body)
    assert created.status_code == 201, created.text
    return dict(created.json())


def instance(
    client: httpx.Client, image: str, name: str, *, cmd: list[str] | None = None, **fields: Any
) -> dict[str, Any]:
    body = {"name": name, "image": image, "vcpus": 1, "size": "256MB",
            "env": {"WHO": name}, "cmd": cmd or SERVE, **fields}  # fmt: skip
    created = client.post("/instances", json=body)
    assert created.status_code == 201, created.text
    return dict(created.json())


def wait_state(client: httpx.Client, name: str, state: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/instances/{name}").json()
        if record["state"] == state or time.monotonic() > deadline:
            assert record["state"] == state, record
            return dict(record)
        time.sleep(0.2)


def curl(host: str, query: str = "") -> tuple[int, str, float]:
    """Status, body and when it came (monotonic) of one request through the group."""
    proc = subprocess.run(
        ["curl", "-sS", "--max-time", "120", "-H", f"Host: {host}", "-w", "\n%{http_code}",
         f"http://127.0.0.1:{PORT}/cgi-bin/who{'?' + query if query else ''}"],
        capture_output=True, text=True,
    )  # fmt: skip
    body, _, status = proc.stdout.rpartition("\n")
    return int(status or 0), body.strip(), time.monotonic()


def concurrent(host: str, count: int, query: str = "", spacing: float = 0.0) -> list[Any]:
    with ThreadPoolExecutor(count) as pool:
        futures = []
        for _ in range(count):
            futures.append(pool.submit(curl, host, query))
            time.sleep(spacing)
        return [f.result() for f in futures]


def until_each_serves(host: str, names: set[str]) -> None:
    """Until every member has answered a request (the balancer's ties go to a random
    upstream, so each is reached in a few tries); each answer must be a 200."""
    seen: set[str] = set()
    for _ in range(200):
        status, body, _ = curl(host)
        assert status == 200, (status, body)
        seen.add(body.split()[0])
        if seen >= names:
            return
        time.sleep(0.1)
    raise AssertionError(f"only {sorted(seen)} of {sorted(names)} answered through {host}")


def until_served(host: str) -> tuple[int, str, float]:
    answer = (0, "", 0.0)
    for _ in range(100):
        answer = curl(host)
        if answer[0] == 200:
            break
        time.sleep(0.2)
    return answer


def log_lines(client: httpx.Client, name: str, source: str) -> list[str]:
    text = client.get(f"/instances/{name}/logs", params={"source": source, "tail": 10000}).text
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def restores(client: httpx.Client, name: str) -> int:
    return sum("restored from a saved VM" in line for line in log_lines(client, name, "hypeman"))


def until_logged(client: httpx.Client, name: str, text: str) -> None:
    for _ in range(300):
        if any(text in line for line in log_lines(client, name, "app")):
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} never printed {text!r}")


def _requests_spread_over_a_group_and_the_hard_limit_fails_at_once(
    server: EmberServer, image: str
) -> None:
    with api(server) as client:
        group(client, "web")
        for name in ("a", "b", "c"):
            instance(client, image, name, service_group={"name": "web"})
        # Running is not listening yet: the first requests wait for a program that
        # listens, they are never answered with an error.
        wait_state(client, "a", "Running")
        answers = concurrent("web.test", 3)
        assert [status for status, _, _ in answers] == [200] * 3, answers
        for name in ("b", "c"):
            wait_state(client, name, "Running")
        until_each_serves("web.test", {"a", "b", "c"})
        answers = concurrent("web.test", 6, "slow", 0.1)
        assert {status for status, _, _ in answers} == {200}, answers
        assert {body.split()[0] for _, body, _ in answers} == {"a", "b", "c"}
        view = client.get("/service-groups/web").json()
        assert sorted(i["name"] for i in view["instances"]) == ["a", "b", "c"]

        # One instance, hard limit 2: the third concurrent slow request fails at once.
        group(client, "tight", soft_limit=2, hard_limit=2)
        moved = client.patch("/instances/c", json={"service_group": {"name": "tight"}})
        assert moved.status_code == 200, moved.text
        assert moved.json()["service_group"]["name"] == "tight"
        for name in ("a", "b"):
            assert client.delete(f"/instances/{name}").status_code == 204
        assert until_served("tight.test")[1].startswith("c ")
        answers = concurrent("tight.test", 3, "slow", 0.3)
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [200, 200, 503], answers
        refused = next(a for a in answers if a[0] == 503)
        assert "hard limit of 2" in refused[1]
        # At once: before either slow request was answered.
        assert refused[2] < min(a[2] for a in answers if a[0] == 200)


def _soft_limit_wakes_another_standby_instance(server: EmberServer, image: str) -> None:
    with api(server) as client:
        group(client, "soft", soft_limit=1, hard_limit=4)
        asleep = {"policy": "on", "stateful": True, "cooldown_time_ms": 600_000}
        for name in ("d", "e"):
            instance(client, image, name, service_group={"name": "soft"}, scale_to_zero=asleep)
        for name in ("d", "e"):
            wait_state(client, name, "Running")
        assert until_served("soft.test")[0] == 200
        try:
            # The group puts both to sleep (a short cooldown, then a long one again).
            for cooldown in (1000, 600_000):
                for name in ("d", "e"):
                    policy = {**asleep, "cooldown_time_ms": cooldown}
                    patched = client.patch(f"/instances/{name}", json={"scale_to_zero": policy})
                    assert patched.status_code == 200, patched.text
                for name in ("d", "e"):
                    wait_state(client, name, "Standby", timeout=60)
            answers = concurrent("soft.test", 2, "slow", 0.5)
            assert [status for status, _, _ in answers] == [200, 200], answers
            assert {body.split()[0] for _, body, _ in answers} == {"d", "e"}, answers
            for name in ("d", "e"):
                assert client.get(f"/instances/{name}").json()["state"] == "Running"
        finally:  # the next test finds d alone in the group, whatever happened here
            assert client.delete("/instances/e").status_code == 204


def _an_idle_group_goes_to_zero_and_wakes_once_per_burst(server: EmberServer, image: str) -> None:
    with api(server) as client:
        _, before, _ = until_served("soft.test")
        short = {"policy": "on", "stateful": True, "cooldown_time_ms": 1000}
        assert client.patch("/instances/d", json={"scale_to_zero": short}).status_code == 200
        asleep = wait_state(client, "d", "Standby", timeout=60)
        assert asleep["stop_reason"] == 7  # --PAK: the platform scaled it to zero
        view = client.get("/service-groups/soft").json()["instances"][0]
        assert view["stop_reason"] == 7 and "scaled to zero" in view["stop_reason_text"]
        # The next request wakes it and is answered by the guest, memory kept.
        status, after, _ = curl("soft.test")
        assert status == 200
        assert after == before  # same name, same boot id: restored, not booted again
        # A burst of 20 to the asleep group: one restore, every request answered (in a
        # group whose hard limit takes them all: "soft" refuses past 4, as it should).
        group(client, "burst")
        moved = client.patch("/instances/d", json={"service_group": {"name": "burst"}})
        assert moved.json()["scale_to_zero"]["cooldown_time_ms"] == 1000, moved.text
        wait_state(client, "d", "Standby", timeout=60)
        restored = restores(client, "d")
        answers = concurrent("burst.test", 20)
        assert [status for status, _, _ in answers] == [200] * 20, answers
        assert {body for _, body, _ in answers} == {before}
        assert restores(client, "d") == restored + 1


def _stateless_sleeps_stopped_and_boots_on_the_next_request(
    server: EmberServer, image: str
) -> None:
    with api(server) as client:
        group(client, "cold")
        cold = {"policy": "on", "stateful": False, "cooldown_time_ms": 1000}
        instance(client, image, "s", service_group={"name": "cold"}, scale_to_zero=cold)
        wait_state(client, "s", "Running")
        _, before, _ = until_served("cold.test")
        stopped = wait_state(client, "s", "Stopped", timeout=60)
        reason = StopReason(stopped["stop_reason"])
        assert StopReason.PLATFORM in reason and StopReason.USER not in reason, stopped
        # The next request boots it again: served by the guest, a new boot.
        status, after, _ = curl("cold.test")
        assert status == 200, after
        assert after.split()[0] == "s" and after != before
        assert client.delete("/instances/s").status_code == 204


def _the_workload_is_notified_before_it_is_scaled_to_zero(server: EmberServer, image: str) -> None:
    with api(server) as client:
        group(client, "told")
        notice = {"policy": "on", "stateful": True, "cooldown_time_ms": 1000,
                  "notify_time_ms": 2000}  # fmt: skip
        serve = ["/bin/sh", "-c", "echo $WHO > /www/who && httpd -p 8080 -h /www && "
                 "trap 'echo notified' USR1 && while true; do sleep 1; done"]  # fmt: skip
        instance(client, image, "n", cmd=serve, service_group={"name": "told"},
                 scale_to_zero=notice)  # fmt: skip
        wait_state(client, "n", "Running")
        assert until_served("told.test")[0] == 200
        wait_state(client, "n", "Standby", timeout=60)
        # Its program caught the notice while it still ran (it logs nothing asleep).
        assert any("notified" in line for line in log_lines(client, "n", "app"))
        assert client.get("/instances/n").json()["stop_reason"] == 7
        # Woken by the next request, it still serves.
        assert curl("told.test")[0] == 200
        assert client.delete("/instances/n").status_code == 204


def _stop_reasons(server: EmberServer, image: str) -> None:
    with api(server) as client:
        # A user's stop (c serves under "tight"): user and platform, not forced.
        assert client.post("/instances/c/stop").status_code == 200
        stopped = wait_state(client, "c", "Stopped")
        reason = StopReason(stopped["stop_reason"])
        assert StopReason.USER in reason and StopReason.FORCED not in reason, stopped
        assert "stopped by the user" in stopped["exit_message"]
        tight = client.get("/service-groups/tight").json()["instances"][0]
        assert tight["stop_reason"] == stopped["stop_reason"]
        # A user-stopped member is not woken by traffic: 503 saying why.
        assert curl("tight.test")[0] == 503
        # The program exits with 3: app and kernel.
        instance(client, image, "quits", cmd=["/bin/sh", "-c", "sleep 1; exit 3"])
        quit_ = wait_state(client, "quits", "Stopped")
        assert (quit_["stop_reason"], quit_["exit_code"]) == (3, 3), quit_
        # A workload that ignores SIGTERM: the stop forces the VM off.
        # (Made through the CLI: `ember run --group` makes the group from -p.)
        stubborn = ["/bin/sh", "-c", "trap '' TERM; echo trapped; while true; do sleep 1; done"]
        env = cli_env(server)
        ran = run_cli(["run", "-d", "--name", "stubborn", "--cpus", "1", "-m", "256MB",
                       "--group", "stubs", "-p", "stubs.test:8001:8080", image, *stubborn],
                      env)  # fmt: skip
        assert ran.code == 0, ran
        wait_state(client, "stubborn", "Running")
        until_logged(client, "stubborn", "trapped")  # Running comes before the trap is set
        assert client.get("/instances/stubborn").json()["service_group"]["name"] == "stubs"
        assert client.post("/instances/stubborn/stop").status_code == 200
        forced = wait_state(client, "stubborn", "Stopped")
        assert forced["stop_reason"] == 28, forced  # FUP--
        assert "forced" in forced["exit_message"]
        # The CLI shows groups and stop reasons; an empty group can go.
        listed = run_cli(["ps", "-a"], env)
        row = next(line for line in listed.out.splitlines() if " stubborn " in line)
        assert "28 FUP--" in row and "stubs" in row, listed.out
        groups = run_cli(["group", "ls"], env).out
        assert all(name in groups for name in ("web", "tight", "burst", "stubs")), groups
        assert json.loads(run_cli(["group", "inspect", "tight"], env).out)["hard_limit"] == 2
        assert run_cli(["group", "rm", "web"], env).code == 0
        refused = run_cli(["group", "rm", "tight"], env)  # c is still in it
        assert refused.code != 0 and "still has instances" in refused.err, refused


def test_requests_spread_over_a_group_and_the_hard_limit_fails_at_once(
    ns: str, server: EmberServer, image: str
) -> None:
    in_netns(ns, _requests_spread_over_a_group_and_the_hard_limit_fails_at_once, server, image)


def test_soft_limit_wakes_another_standby_instance(
    ns: str, server: EmberServer, image: str
) -> None:
    in_netns(ns, _soft_limit_wakes_another_standby_instance, server, image)


def test_an_idle_group_goes_to_zero_and_wakes_once_per_burst(
    ns: str, server: EmberServer, image: str
) -> None:
    in_netns(ns, _an_idle_group_goes_to_zero_and_wakes_once_per_burst, server, image)


def test_stateless_sleeps_stopped_and_boots_on_the_next_request(
    ns: str, server: EmberServer, image: str
) -> None:
    in_netns(ns, _stateless_sleeps_stopped_and_boots_on_the_next_request, server, image)


def test_the_workload_is_notified_before_it_is_scaled_to_zero(
    ns: str, server: EmberServer, image: str
) -> None:
    in_netns(ns, _the_workload_is_notified_before_it_is_scaled_to_zero, server, image)


def test_stop_reasons(ns: str, server: EmberServer, image: str) -> None:
    in_netns(ns, _stop_reasons, server, image)
