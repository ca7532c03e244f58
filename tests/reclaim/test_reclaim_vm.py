"""Memory reclaim on a real guest through the official client: the balloon takes memory
from the guest (the answer's figures and the guest's own MemTotal agree), and the loop
gives it back once the hold ends."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypeman import BadRequestError, Hypeman

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from tests.conftest import push_to_ember, running_server
from tests.e2e.test_instance_volumes import SLEEP, run

pytestmark = pytest.mark.vm
MIB = 1 << 20


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmberServer]:
    """A server whose reclaim loop looks every half second (it gives memory back)."""
    with running_server(env={"EMBER_MEMORY_RECLAIM_POLL_SECONDS": "0.5"}) as server:
        yield server


def mem_total(client: Hypeman, instance: str) -> int:
    code, said = run(client, instance, "grep MemTotal /proc/meminfo")
    assert code == 0, said
    return int(said.split()[1]) * 1024


def test_reclaim_shrinks_a_running_guest_and_the_loop_gives_it_back(
    shared_server: EmberServer, hello: str
) -> None:
    client = Hypeman(base_url=shared_server.url, api_key=shared_server.token())
    inst = client.instances.create(name="ballooned", image=hello, vcpus=1, size="512MB", cmd=SLEEP)
    assert client.instances.wait(inst.id, state="Running", api_timeout="90s").state == "Running"
    before = mem_total(client, inst.id)

    with pytest.raises(BadRequestError, match="hold_for"):
        client.resources.reclaim_memory(reclaim_bytes=MIB, hold_for="soon")
    plan = client.resources.reclaim_memory(reclaim_bytes=96 * MIB, dry_run=True)
    assert plan.planned_reclaim_bytes == 96 * MIB and plan.applied_reclaim_bytes == 0
    assert mem_total(client, inst.id) == before

    # 1 GiB asked: one 512 MB guest gives one step (a quarter, 128 MiB), above its floor.
    answer = client.resources.reclaim_memory(reclaim_bytes=1024 * MIB, reason="vm test")
    (action,) = answer.actions
    assert (action.instance_id, action.status) == (inst.id, "applied")
    assert action.assigned_memory_bytes == 512 * MIB
    assert action.protected_floor_bytes == 128 * MIB
    assert action.previous_target_guest_memory_bytes == 512 * MIB
    assert action.planned_target_guest_memory_bytes == 384 * MIB
    assert action.target_guest_memory_bytes == 384 * MIB
    assert action.applied_reclaim_bytes == answer.applied_reclaim_bytes == 128 * MIB
    assert answer.requested_reclaim_bytes == 1024 * MIB and answer.hold_until is not None
    assert answer.host_pressure_state == "healthy" and answer.host_available_bytes > 0
    shrunk = mem_total(client, inst.id)
    assert before - shrunk == 128 * MIB  # the guest sees it: the balloon holds those pages

    # The hold ends (0 bytes): the loop gives the memory back step by step.
    assert client.resources.reclaim_memory(reclaim_bytes=0).hold_until is None
    deadline = time.monotonic() + 60
    while mem_total(client, inst.id) != before:
        assert time.monotonic() < deadline, "the loop did not give the memory back"
        time.sleep(0.5)
    client.instances.delete(inst.id)


def test_host_pressure_makes_the_loop_reclaim_down_to_the_floor() -> None:
    """A threshold no host reaches: every pass is under pressure, and takes a step from
    the guest until it sits at its protected floor."""
    env = {"EMBER_MEMORY_PRESSURE_THRESHOLD_BYTES": str(1 << 50),
           "EMBER_MEMORY_RECLAIM_POLL_SECONDS": "0.5"}  # fmt: skip
    with running_server(env=env) as server:
        client = Hypeman(base_url=server.url, api_key=server.token())
        image = push_to_ember(server, hello_image(), "hello", "latest")
        inst = client.instances.create(name="squeezed", image=image, vcpus=1, size="512MB",
                                       cmd=SLEEP)  # fmt: skip
        assert client.instances.wait(inst.id, state="Running", api_timeout="90s").state == (
            "Running"
        )
        deadline = time.monotonic() + 90
        while True:
            (action,) = client.resources.reclaim_memory(reclaim_bytes=0, dry_run=True).actions
            if action.previous_target_guest_memory_bytes == action.protected_floor_bytes:
                break
            assert time.monotonic() < deadline, "the loop did not reclaim to the floor"
            time.sleep(0.5)
        answer = client.resources.reclaim_memory(reclaim_bytes=64 * MIB, dry_run=True)
        assert answer.host_pressure_state == "pressure"
        assert answer.planned_reclaim_bytes == 0  # nothing left above the floor
        assert action.protected_floor_bytes == 128 * MIB
        total = int(run(client, inst.id, "grep MemTotal /proc/meminfo")[1].split()[1]) * 1024
        assert total <= 160 * MIB  # 512 MB guest, balloon holding all but the 128 MiB floor
        client.instances.delete(inst.id)
