"""Images whose CMD is /sbin/init boot systemd as PID 1, with the agent as its child.

The image is Debian (debootstrap minbase + systemd + udev), built once per
machine by the test kit. Under TCG systemd needs some seconds to boot: waits
are generous and no time is asserted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypeman import Hypeman
from hypeman.lib.cp import cp_to_instance
from hypeman.lib.exec import exec as hm_exec

from ember.testkit import debian_systemd_image
from ember.testkit.ember_server import EmberServer
from tests.conftest import push_to_ember, running_server

pytestmark = pytest.mark.vm
BOOT = "120s"
# Long enough that, if the stop ends inside it, systemd's own poweroff did it;
# the forced kill after it would show in the operations log.
STOP_TIMEOUT = 120
BOOTED = ("running", "degraded", "maintenance", "stopping")  # is-system-running after boot


@pytest.fixture(scope="module")
def server() -> Iterator[EmberServer]:
    env = {"EMBER_STOP_TIMEOUT_SECONDS": str(STOP_TIMEOUT)}
    with running_server(env=env) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: EmberServer) -> Hypeman:
    return Hypeman(base_url=server.url, api_key=server.token(), max_retries=0, timeout=300)


@pytest.fixture(autouse=True)
def delete_instances(client: Hypeman) -> Iterator[None]:
    """VMs outlive the server: a failed test must not leave its VM running."""
    yield
    for inst in client.instances.list():
        client.instances.delete(inst.id)


@pytest.fixture(scope="module")
def image(server: EmberServer) -> str:
    # The first run on a machine debootstraps (about a minute); later ones use the cache.
    return push_to_ember(server, debian_systemd_image(), "debian-systemd", "bookworm")


def run(client: Hypeman, ref: str, *command: str) -> tuple[int, str]:
    result = hm_exec(client, ref, list(command), wait_for_agent=60, timeout=300)
    return result.exit_code, result.output.decode(errors="replace").strip()


def system_state(client: Hypeman, ref: str, deadline: float) -> str:
    """systemd's state once boot is over; until systemd has set itself up,
    systemctl answers "offline" or cannot connect, so ask again."""
    while True:
        _, state = run(client, ref, "systemctl", "is-system-running", "--wait")
        if state in BOOTED or time.monotonic() > deadline:
            return state
        time.sleep(1)


def assert_powered_off_by_systemd(client: Hypeman, ref: str) -> None:
    inst = client.instances.get(ref)
    assert inst.state == "Stopped"
    # The agent writes this record when systemd-shutdown (PID 1) asks every
    # process to leave before it powers off: only systemd's own poweroff says so. Who
    # asked comes first (the stop reason's words), then what the workload said.
    assert (inst.exit_code, inst.exit_message) == (
        0, "stopped by the user (systemd shut the system down (poweroff))"
    )  # fmt: skip
    operations = list(client.instances.logs(ref, source="hypeman", tail=1000))
    assert any("stop: SIGTERM to the workload" in line for line in operations)
    assert not any("forcing the VM off" in line for line in operations), operations


def test_systemd_boots_as_pid_1_serves_exec_and_powers_off(
    client: Hypeman, image: str, tmp_path: Path
) -> None:
    inst = client.instances.create(name="systemd", image=image, vcpus=1, size="512MB")
    assert client.instances.wait(inst.id, state="Running", api_timeout=BOOT).state == "Running"

    assert run(client, inst.id, "cat", "/proc/1/comm") == (0, "systemd")
    # exec runs under the agent, which runs as systemd's child (PPid 1).
    assert run(client, inst.id, "sh", "-c", "grep PPid /proc/$PPID/status") == (0, "PPid:\t1")
    state = system_state(client, inst.id, deadline=time.monotonic() + 300)
    _, failed = run(client, inst.id, "systemctl", "--failed", "--no-pager", "--plain")
    assert state == "running", failed
    # systemd kept the hostname Ember set (the image has no /etc/hostname).
    assert run(client, inst.id, "hostname") == (0, "systemd")
    code, machine_id = run(client, inst.id, "cat", "/etc/machine-id")
    assert code == 0 and len(machine_id) == 32, machine_id
    code, units = run(client, inst.id, "systemctl", "list-units", "--no-pager", "--plain")
    assert code == 0 and "multi-user.target" in units
    # Copies ride exec sessions of the agent binary: they work from under systemd too.
    (tmp_path / "note").write_text("from the host")
    cp_to_instance(client, inst.id, str(tmp_path / "note"), "/root/note")
    assert run(client, inst.id, "cat", "/root/note") == (0, "from the host")

    stopped = client.instances.stop(inst.id)
    assert stopped.state == "Stopped"
    assert_powered_off_by_systemd(client, inst.id)


def test_stop_right_after_running_still_reaches_systemd(client: Hypeman, image: str) -> None:
    # READY comes as systemd starts, before it takes signals: the agent must hold
    # the stop until systemd can hear it rather than let the kernel drop it.
    inst = client.instances.create(name="systemd-early", image=image, vcpus=1, size="512MB")
    assert client.instances.wait(inst.id, state="Running", api_timeout=BOOT).state == "Running"
    assert client.instances.stop(inst.id).state == "Stopped"
    assert_powered_off_by_systemd(client, inst.id)
