"""Auto-standby with real VMs, a real `ember serve` and the host's conntrack, driven by the
official client. The server runs inside a namespace the test made; the test's own
connections to the guests come from that namespace (never from the host's)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any, TypeVar

import pytest
from hypeman import ConflictError, Hypeman
from hypeman.types import AutoStandbyPolicyParam, AutoStandbyStatus, Instance

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from ember.testkit.netns import in_netns
from tests.conftest import push_to_ember, running_server

pytestmark = pytest.mark.vm
T = TypeVar("T")
SERVE = ["/hello", "serve", "8080"]
# Shorter than any real use, so the test does not wait (a setting and a policy, not a rule).
IDLE = "3s"
ENV = {"EMBER_AUTO_STANDBY_RECONCILE_SECONDS": "0.5"}


@pytest.fixture(scope="module")
def server(ns: str) -> Iterator[EmberServer]:
    with running_server(ns, env=ENV) as server:
        yield server


@pytest.fixture(scope="module")
def image(server: EmberServer, ns: str) -> str:
    return in_netns(ns, push_to_ember, server, hello_image(), "hello", "auto")


def official(server: EmberServer) -> Hypeman:
    return Hypeman(base_url=server.url, api_key=server.token(), max_retries=0, timeout=120)


def eventually(probe: Callable[[], T | None], timeout: float = 120) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := probe()) is not None:
            return found
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def run(client: Hypeman, image: str, name: str, **fields: Any) -> Instance:
    inst = client.instances.create(
        name=name, image=image, vcpus=1, size="256MB", cmd=SERVE, **fields
    )
    client.instances.wait(inst.id, state="Running", api_timeout="120s")
    return client.instances.get(inst.id)


def policy(ignore_ports: list[int] | None = None) -> AutoStandbyPolicyParam:
    wanted = AutoStandbyPolicyParam(enabled=True, idle_timeout=IDLE)
    if ignore_ports is not None:
        wanted["ignore_destination_ports"] = ignore_ports
    return wanted


def hold_open(ip: str) -> socket.socket:
    """An inbound TCP connection to the guest's server, kept open (the server waits for a
    request on it)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return socket.create_connection((ip, 8080), timeout=2)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def status_when(
    client: Hypeman, inst: Instance, wanted: Callable[[AutoStandbyStatus], bool]
) -> AutoStandbyStatus:
    def probe() -> AutoStandbyStatus | None:
        status = client.instances.auto_standby.status(inst.id)
        return status if wanted(status) else None

    return eventually(probe)


def idle_goes_to_standby_busy_does_not(server: EmberServer, image: str) -> dict[str, Any]:
    client = official(server)
    idle = run(client, image, "idle", auto_standby=policy())
    # Enabled (PATCH) only once its connection is open, so it is never idle before.
    busy = run(client, image, "busy", auto_standby={"enabled": False, "idle_timeout": IDLE})
    assert busy.network is not None and busy.network.ip
    out: dict[str, Any] = {}
    with closing(hold_open(busy.network.ip)):
        client.instances.update(busy.id, auto_standby=policy())
        waited = client.instances.wait(idle.id, state="Standby", api_timeout="120s")
        out["idle_state"] = waited.state
        out["idle_status"] = client.instances.auto_standby.status(idle.id)
        # The idle one went; the busy one has had its connection longer than the timeout.
        out["busy_status"] = status_when(
            client, busy, lambda s: s.reason == "active_inbound_connections"
        )
        out["busy_state"] = client.instances.get(busy.id).state
        out["busy_hold"] = client.instances.auto_standby.hold(busy.id)
    # Connection closed: now the busy one counts down and goes too.
    out["busy_after"] = client.instances.wait(busy.id, state="Standby", api_timeout="120s").state
    try:
        client.instances.auto_standby.hold(idle.id)
        out["hold_in_standby"] = "accepted"
    except ConflictError as exc:
        out["hold_in_standby"] = exc.status_code
    # Restored, it counts down again (a long timeout now, so it stays to be asked).
    client.instances.update(idle.id, auto_standby={"enabled": True, "idle_timeout": "1h"})
    client.instances.restore(idle.id)
    out["restored_status"] = client.instances.auto_standby.status(idle.id)
    for inst in (idle, busy):
        client.instances.delete(inst.id)
    return out


def test_idle_goes_to_standby_busy_does_not(server: EmberServer, image: str, ns: str) -> None:
    out = in_netns(ns, idle_goes_to_standby_busy_does_not, server, image)
    assert out["idle_state"] == "Standby"
    idle_status = out["idle_status"]
    assert (idle_status.status, idle_status.reason) == ("ineligible", "instance_not_running")
    assert idle_status.configured and idle_status.enabled and idle_status.supported

    busy = out["busy_status"]
    assert (busy.status, busy.reason) == ("active", "active_inbound_connections")
    assert busy.active_inbound_connections >= 1 and not busy.eligible
    assert busy.last_inbound_activity_at is not None
    assert busy.tracking_mode.startswith("conntrack")
    assert out["busy_state"] == "Running"
    assert out["busy_hold"].hold_until is not None
    assert out["busy_after"] == "Standby"
    assert out["hold_in_standby"] == 409

    restored = out["restored_status"]
    assert (restored.status, restored.reason) == ("idle_countdown", "idle_timeout_not_elapsed")
    assert restored.eligible and restored.idle_timeout == "1h"


def ignored_port_does_not_keep_awake(server: EmberServer, image: str) -> dict[str, Any]:
    client = official(server)
    ignoring = policy(ignore_ports=[8080])
    inst = run(client, image, "ignored", auto_standby={**ignoring, "enabled": False})
    assert inst.network is not None and inst.network.ip
    out: dict[str, Any] = {}
    with closing(hold_open(inst.network.ip)):
        client.instances.update(inst.id, auto_standby=ignoring)
        out["status"] = client.instances.auto_standby.status(inst.id)
        out["state"] = client.instances.wait(inst.id, state="Standby", api_timeout="120s").state
    client.instances.delete(inst.id)
    return out


def test_ignored_destination_port_does_not_keep_it_awake(
    server: EmberServer, image: str, ns: str
) -> None:
    out = in_netns(ns, ignored_port_does_not_keep_awake, server, image)
    status = out["status"]
    assert status.active_inbound_connections == 0
    assert status.reason in ("idle_timeout_not_elapsed", "ready_for_standby")
    assert out["state"] == "Standby"


def countdown_and_network_less(server: EmberServer, image: str) -> dict[str, Any]:
    client = official(server)
    slow = run(client, image, "slow", auto_standby={"enabled": True, "idle_timeout": "1h"})
    offline = run(client, image, "offline", network={"enabled": False}, auto_standby=policy())
    out: dict[str, Any] = {"offline": client.instances.auto_standby.status(offline.id)}
    out["slow"] = status_when(client, slow, lambda s: s.idle_since is not None)
    out["unconfigured_hold"] = client.instances.auto_standby.hold(offline.id)
    # PATCH turns it off; the status says so.
    client.instances.update(offline.id, auto_standby={"enabled": False})
    out["offline_disabled"] = client.instances.auto_standby.status(offline.id)
    return out


def events(server: EmberServer) -> str:
    """What Ember logged about the instance (for a failure's message)."""
    client = official(server)
    return "".join(client.instances.logs("slow", source="hypeman", tail=50))


def after_restart(server: EmberServer) -> dict[str, Any]:
    client = official(server)
    return {"slow": client.instances.auto_standby.status("slow")}


def delete_all(server: EmberServer) -> None:
    client = official(server)
    for name in ("slow", "offline"):
        client.instances.delete(name)


def test_countdown_survives_a_restart_and_network_less_says_so(
    server: EmberServer, image: str, ns: str
) -> None:
    before = in_netns(ns, countdown_and_network_less, server, image)
    offline = before["offline"]
    assert (offline.status, offline.reason) == ("ineligible", "network_disabled")
    assert before["offline_disabled"].reason == "policy_disabled"
    slow = before["slow"]
    assert (slow.status, slow.reason) == ("idle_countdown", "idle_timeout_not_elapsed")
    assert slow.countdown_remaining and slow.next_standby_at is not None

    server.stop()
    server.start()
    after = in_netns(ns, after_restart, server)["slow"]
    try:
        assert after.idle_since == slow.idle_since, in_netns(ns, events, server)
        assert after.reason == "idle_timeout_not_elapsed"
    finally:
        in_netns(ns, delete_all, server)


def refusals(server: EmberServer, image: str) -> list[str]:
    from hypeman import BadRequestError

    client = official(server)
    messages = []
    bad: list[dict[str, Any]] = [
        {"enabled": True},
        {"enabled": True, "idle_timeout": "0s"},
        {"enabled": True, "idle_timeout": "1m", "ignore_source_cidrs": ["nope"]},
        {"enabled": True, "idle_timeout": "1m", "ignore_destination_ports": [70000]},
    ]
    for body in bad:
        try:
            client.instances.create(name="bad", image=image, cmd=SERVE, auto_standby=body)  # type: ignore[arg-type]
            messages.append("accepted")
        except BadRequestError as exc:
            messages.append(str(exc))
    return messages


def test_bad_policies_are_refused_by_field(server: EmberServer, image: str, ns: str) -> None:
    messages = in_netns(ns, refusals, server, image)
    for message, field in zip(
        messages,
        ["idle_timeout", "idle_timeout", "ignore_source_cidrs[0]", "ignore_destination_ports[0]"],
        strict=True,
    ):
        assert f"auto_standby.{field}" in message
