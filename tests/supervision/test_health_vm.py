"""HTTP health checks with real VMs on Ember's network: the server runs inside a network
namespace this test made, and is driven from inside it (no traffic to guests from the
host's own namespace)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypeman import Hypeman
from hypeman.types import HealthCheckParam

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from ember.testkit.netns import in_netns
from tests.conftest import push_to_ember, running_server

pytestmark = pytest.mark.vm
SERVE = ["/hello", "serve", "8080"]


@pytest.fixture(scope="module")
def server(ns: str) -> Iterator[EmberServer]:
    with running_server(ns, env={"EMBER_SUPERVISOR_POLL_SECONDS": "0.2"}) as server:
        yield server


def scenario(server: EmberServer) -> dict[str, Any]:
    image = push_to_ember(server, hello_image(), "hello", "health")
    client = Hypeman(base_url=server.url, api_key=server.token(), max_retries=0)
    out: dict[str, Any] = {}
    good_check: HealthCheckParam = {
        "type": "http", "http": {"port": 8080, "path": "/"},
        "interval": "1s", "timeout": "1s", "failure_threshold": 2,
    }  # fmt: skip
    # The workload answers 200: a check that wants 204 fails on every probe.
    sick_check: HealthCheckParam = {
        **good_check, "http": {"port": 8080, "path": "/", "expected_status": 204}
    }  # fmt: skip
    good = client.instances.create(
        name="good", image=image, cmd=SERVE, vcpus=1, size="256MB",
        health_check=good_check,
        restart_policy={"policy": "on_failure", "backoff": "1s"},
    )  # fmt: skip
    # Unhealthy, and the restart policy restarts it (once).
    sick = client.instances.create(
        name="sick", image=image, cmd=SERVE, vcpus=1, size="256MB",
        health_check=sick_check,
        restart_policy={"policy": "on_failure", "backoff": "1s", "max_attempts": 1},
    )  # fmt: skip
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now_good, now_sick = client.instances.get(good.id), client.instances.get(sick.id)
        if now_sick.health_status is not None:
            seen.add(now_sick.health_status.status)
        status = now_sick.restart_status
        healthy = now_good.health_status and now_good.health_status.status == "healthy"
        if healthy and status and status.blocked_reason == "max_attempts_exceeded":
            break
        time.sleep(0.2)
    out["good"] = client.instances.get(good.id).model_dump(mode="json")
    out["sick"] = client.instances.get(sick.id).model_dump(mode="json")
    out["sick_seen"] = sorted(seen)
    out["sick_log"] = list(client.instances.logs(sick.id, source="hypeman", tail=1000))
    return out


def test_failing_health_check_turns_unhealthy_and_restarts(server: EmberServer, ns: str) -> None:
    out = in_netns(ns, scenario, server)
    good, sick = out["good"], out["sick"]
    assert good["health_status"]["status"] == "healthy"
    assert good["health_status"]["consecutive_successes"] >= 1
    assert good["restart_status"]["attempts"] == 0
    # Unhealthy lasts only until the supervisor restarts the VM, which a loaded machine's
    # polling can miss: the operations log records every health transition.
    assert any("health: unhealthy" in line for line in out["sick_log"]), out["sick_seen"]
    status = sick["restart_status"]
    assert status["last_reason"] == "health_check_failed"
    assert status["attempts"] == 1 and status["blocked_reason"] == "max_attempts_exceeded"
    assert sum("VMM running" in line for line in out["sick_log"]) == 2  # first boot + restart
