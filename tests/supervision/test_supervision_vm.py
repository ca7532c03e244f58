"""Supervision with real VMs and a real `ember serve`, through the official client: restart
policies, expiry (also across a server restart), PATCH, admission, phases."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
from hypeman import BadRequestError, Hypeman, RateLimitError
from hypeman.types import AutoStandbyPolicyParam, Instance, InstanceHealthStatus

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from tests.conftest import push_to_ember, running_server

pytestmark = pytest.mark.vm
BOOT = "120s"
T = TypeVar("T")


@pytest.fixture(scope="module")
def server() -> Iterator[EmberServer]:
    # Shorter polls than the defaults (timings of the test, not rules).
    env = {
        "EMBER_SUPERVISOR_POLL_SECONDS": "0.2",
        "EMBER_EXPIRY_POLL_SECONDS": "0.2",
        # Admission's limit at half the host's memory: a create of 3/4 of it passes the plan
        # (under the host's memory) and is refused by admission, without any VM running.
        "EMBER_MEMORY_OVERSUBSCRIPTION": "0.5",
    }
    with running_server(env=env) as server:
        yield server


@pytest.fixture(scope="module")
def image(server: EmberServer) -> str:
    return push_to_ember(server, hello_image(), "hello", "latest")


@pytest.fixture
def client(server: EmberServer) -> Hypeman:
    return Hypeman(base_url=server.url, api_key=server.token(), max_retries=0)


def eventually(probe: Callable[[], T | None], timeout: float = 120, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := probe()) is not None:
            return found
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def test_on_failure_restarts_with_backoff_then_blocks(client: Hypeman, image: str) -> None:
    inst = client.instances.create(
        name="crashy", image=image, cmd=["/hello", "exit", "3"], vcpus=1, size="256MB",
        restart_policy={"policy": "on_failure", "backoff": "1s", "max_attempts": 2},
    )  # fmt: skip
    assert inst.restart_policy is not None and inst.restart_policy.policy == "on_failure"

    def blocked() -> Instance | None:
        current = client.instances.get(inst.id)
        status = current.restart_status
        return current if status and status.blocked_reason else None

    done = eventually(blocked)
    status = done.restart_status
    assert status is not None
    assert (status.blocked_reason, status.attempts) == ("max_attempts_exceeded", 2)
    assert done.state == "Stopped" and done.exit_code == 3 and status.next_attempt_at is None
    assert status.last_attempt_at is not None
    operations = list(client.instances.logs(inst.id, source="hypeman", tail=1000))
    boots = [line for line in operations if "VMM running" in line]
    assert len(boots) == 3  # the first boot and two restarts
    attempts = [
        datetime.fromisoformat(line.split()[0])
        for line in operations
        if "restart attempt" in line and "failed" not in line
    ]
    stops = [
        datetime.fromisoformat(line.split()[0]) for line in operations if "state -> Stopped" in line
    ]
    # Each attempt waited the backoff after the boot before it ended.
    assert all((a - s).total_seconds() >= 1.0 for a, s in zip(attempts, stops, strict=False))
    client.instances.delete(inst.id)


def test_always_restarts_a_clean_exit_and_a_manual_stop_is_kept(
    client: Hypeman, image: str
) -> None:
    inst = client.instances.create(
        name="looper", image=image, cmd=["/hello", "exit", "0"], vcpus=1, size="256MB",
        restart_policy={"policy": "always", "backoff": "1s"},
    )  # fmt: skip

    def restarted() -> Instance | None:
        current = client.instances.get(inst.id)
        status = current.restart_status
        return current if status and (status.attempts or 0) >= 1 else None

    eventually(restarted)
    client.instances.delete(inst.id)

    server = client.instances.create(
        name="steady", image=image, cmd=["/hello", "serve", "8080"], vcpus=1, size="256MB",
        restart_policy={"policy": "always", "backoff": "1s"},
    )  # fmt: skip
    client.instances.wait(server.id, state="Running", api_timeout=BOOT)
    stopped = client.instances.stop(server.id)
    assert stopped.state == "Stopped"
    assert stopped.restart_status is not None
    assert stopped.restart_status.blocked_reason == "manual_stop"
    time.sleep(3)  # three backoffs: nothing restarts it
    after = client.instances.get(server.id)
    assert after.state == "Stopped" and after.restart_status is not None
    assert after.restart_status.attempts == 0
    # A manual start clears the block; supervision starts over.
    started = client.instances.start(server.id)
    assert started.restart_status is not None and started.restart_status.blocked_reason is None
    client.instances.delete(server.id)


def test_ttl_patch_and_phases(client: Hypeman, image: str) -> None:
    began = time.monotonic()
    inst = client.instances.create(
        name="timed", image=image, cmd=["/hello", "serve", "8080"], vcpus=1, size="256MB"
    )
    client.instances.wait(inst.id, state="Running", api_timeout=BOOT)
    create_to_running_ms = (time.monotonic() - began) * 1000
    running = client.instances.get(inst.id)
    assert running.expires_at is None and running.current_phase == "running"
    phases = running.phase_durations_ms or {}
    assert {"image", "disks", "vmm", "workload"} <= set(phases)
    assert "guest" in phases or {"kernel", "agent"} <= set(phases)
    assert abs(sum(phases.values()) - create_to_running_ms) <= 0.1 * create_to_running_ms

    def kernel_measured() -> dict[str, int] | None:
        durations = client.instances.get(inst.id).phase_durations_ms or {}
        return durations if "kernel" in durations else None

    split = eventually(kernel_measured, timeout=15)
    assert split["kernel"] > 0
    assert running.health_status is not None and running.health_status.status == "disabled"

    # PATCH, live: tags, policies, then an expiry that deletes it.
    patched = client.instances.update(
        inst.id,
        restart_policy={"policy": "on_failure", "max_attempts": 1},
        health_check={"type": "exec", "exec": {"command": ["true"]}, "interval": "1s"},
        extra_body={"tags": {"team": "a"}},
    )
    assert patched.tags == {"team": "a"} and patched.restart_policy is not None
    assert patched.health_check is not None and patched.health_check.type == "exec"

    def healthy_status() -> InstanceHealthStatus | None:
        status = client.instances.get(inst.id).health_status
        return status if status is not None and status.status == "healthy" else None

    healthy = eventually(healthy_status, timeout=30)
    assert healthy.consecutive_successes >= 1
    with pytest.raises(BadRequestError, match=r"auto_standby\.idle_timeout"):
        client.instances.update(inst.id, auto_standby={"enabled": True})  # needs a timeout
    policy: AutoStandbyPolicyParam = {"enabled": True, "idle_timeout": "10m"}
    standby_policy = client.instances.update(inst.id, auto_standby=policy).auto_standby
    assert standby_policy is not None and standby_policy.idle_timeout == "10m"
    with pytest.raises(BadRequestError, match="ttl, expires_at"):
        client.instances.update(inst.id, ttl="1h", expires_at="2099-01-01T00:00:00Z")
    with pytest.raises(BadRequestError, match="expires_at"):
        client.instances.update(inst.id, expires_at="2000-01-01T00:00:00Z")
    expiring = client.instances.update(inst.id, ttl="2s")
    assert expiring.expires_at is not None and expiring.expires_at > datetime.now(UTC)
    eventually(lambda: None if any(i.id == inst.id for i in client.instances.list()) else True)


def test_create_past_the_memory_limit_leaves_nothing(
    client: Hypeman, image: str, server: EmberServer
) -> None:
    before = {p.name for p in (server.data_dir / "instances").iterdir()}
    with pytest.raises(RateLimitError, match="size"):
        client.instances.create(name="greedy", image=image, vcpus=1, size=_most_memory())
    assert all(i.name != "greedy" for i in client.instances.list())
    assert {p.name for p in (server.data_dir / "instances").iterdir()} == before


def _most_memory() -> str:
    total_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return f"{total_kib * 3 // 4 // 1024}MB"


def test_expired_while_down_is_deleted_at_start(image: str, server: EmberServer) -> None:
    client = Hypeman(base_url=server.url, api_key=server.token(), max_retries=0)
    inst = client.instances.create(
        name="ephemeral", image=image, cmd=["/hello", "serve", "8080"], ttl="6s",
        vcpus=1, size="256MB",
    )  # fmt: skip
    assert inst.expires_at is not None
    server.stop()
    try:
        time.sleep(max(0.0, (inst.expires_at - datetime.now(UTC)).total_seconds()) + 0.5)
        server.start()
        client = Hypeman(base_url=server.url, api_key=server.token(), max_retries=0)
        assert all(i.id != inst.id for i in client.instances.list())
        assert not (server.data_dir / "instances" / inst.id).exists()
    finally:
        if server.process is None or server.process.poll() is not None:
            server.start()


def test_resources_and_capabilities_parse(client: Hypeman, image: str) -> None:
    inst = client.instances.create(
        name="counted", image=image, cmd=["/hello", "serve", "8080"], vcpus=1, size="256MB",
        disk_io_bps="10MB/s",
    )  # fmt: skip
    resources = client.resources.get()
    assert resources.memory.allocated >= 256 << 20 and resources.cpu.allocated >= 1
    assert resources.memory.oversub_ratio == 0.5  # the module server's setting
    assert resources.memory.effective_limit == resources.memory.capacity // 2
    mine = next(a for a in resources.allocations if a.instance_id == inst.id)
    assert (mine.cpu, mine.memory_bytes, mine.disk_io_bps) == (1, 256 << 20, 10 << 20)
    assert resources.disk.capacity > resources.disk.available > 0
    capabilities = client.capabilities.get()
    qemu = next(r for r in capabilities.runtimes if r.name == "qemu")
    assert qemu.available and capabilities.default_runtime.name == "qemu"
    assert (qemu.model_extra or {}).get("accelerator") in ("kvm", "tcg")
    assert (qemu.model_extra or {}).get("accelerator_reason")
    assert capabilities.server.version and "instances" in capabilities.features
    client.instances.delete(inst.id)
