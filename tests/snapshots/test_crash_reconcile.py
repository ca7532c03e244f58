"""A server killed with SIGKILL in the middle of a standby, a fork and a restore, then
restarted on the same data dir: every instance listed and usable, no guest left paused,
no VM process that no record explains (ember/instances/reconcile.py).

The kill lands at a step seen from outside: the save's partial state file exists (QEMU
has paused the guest and streams its RAM), or the restore's VMM (`-incoming`) runs."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypeman import Hypeman
from hypeman.lib.exec import exec as hm_exec

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from tests.conftest import push_to_ember, running_server

pytestmark = pytest.mark.vm
BOOT = "180s"  # TCG on a shared 2-core machine
SETTLED = {"Running", "Standby", "Stopped"}


@pytest.fixture(scope="module")
def server() -> Iterator[EmberServer]:
    with running_server() as server:
        yield server


@pytest.fixture(scope="module")
def source(server: EmberServer) -> str:
    image = push_to_ember(server, hello_image(), "hello", "crash")
    client = official(server)
    inst = client.instances.create(name="src", image=image, vcpus=1, size="256MB",
                                   cmd=["sleep", "100000"])  # fmt: skip
    assert client.instances.wait(inst.id, state="Running", api_timeout=BOOT).state == "Running"
    return inst.id


def processes_of(instances: Path) -> dict[str, list[int]]:
    """Every live process naming a path in an instance's directory (broader than what the
    server kills: a helper left behind counts too), by instance id."""
    prefix = str(instances).encode() + b"/"
    found: dict[str, list[int]] = {}
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if prefix in cmdline and state != "Z":
            instance_id = cmdline.split(prefix, 1)[1].split(b"/", 1)[0].decode()
            found.setdefault(instance_id, []).append(int(proc.name))
    return found


def official(server: EmberServer) -> Hypeman:
    return Hypeman(base_url=server.url, api_key=server.token(), max_retries=0, timeout=180)


def post(server: EmberServer, path: str, body: object = None) -> Callable[[], None]:
    def send() -> None:
        headers = {"Authorization": f"Bearer {server.token()}"}
        with contextlib.suppress(httpx.HTTPError):  # the server is killed under it
            httpx.post(server.url + path, json=body, headers=headers, timeout=180)

    return send


def incoming_vmm(server: EmberServer, instance_id: str | None = None, *,
                 other_than: str | None = None) -> Callable[[], bool]:  # fmt: skip
    """True once a VMM started for a restore (`-incoming`) runs for that instance."""
    instances = server.data_dir / "instances"

    def seen() -> bool:
        for found, pids in processes_of(instances).items():
            if found == other_than or (instance_id is not None and found != instance_id):
                continue
            for pid in pids:
                try:
                    if b"-incoming" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        return True
                except OSError:
                    continue
        return False

    return seen


def saving(server: EmberServer, instance_id: str) -> Callable[[], bool]:
    """True while a save streams into the instance's partial state file."""
    partial = server.data_dir / "instances" / instance_id / "standby" / "vmstate.partial"
    return partial.exists


def kill_during(server: EmberServer, request: Callable[[], None], step: Callable[[], bool]) -> None:
    """Send `request`, SIGKILL the server as soon as `step` holds, restart it."""
    sender = threading.Thread(target=request)
    sender.start()
    deadline = time.monotonic() + 180
    while not step():
        assert sender.is_alive(), "the request finished before the step was seen"
        assert time.monotonic() < deadline, "the step was never seen"
        time.sleep(0.001)
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    sender.join()
    server.start(timeout=120)


def check_all_usable(server: EmberServer) -> dict[str, str]:
    """Every instance in a state that works: Running ones answer exec, Standby ones restore
    (and then answer); no VM process but each Running instance's one VMM."""
    client = official(server)
    states: dict[str, str] = {i.id: i.state for i in client.instances.list()}
    assert set(states.values()) <= SETTLED, states
    for instance_id, state in states.items():
        if state == "Standby":
            assert client.instances.restore(instance_id).state == "Running"
        if state != "Stopped":
            result = hm_exec(client, instance_id, ["echo", "alive"], wait_for_agent=60)
            assert (result.exit_code, result.output.strip()) == (0, b"alive"), instance_id
    running = {i.id for i in client.instances.list() if i.state == "Running"}
    assert_vmms(server, running)
    return states


def assert_vmms(server: EmberServer, running: set[str]) -> None:
    """One VM process per Running instance (helpers of a save would be its children), none
    for any other instance or folder."""
    found = processes_of(server.data_dir / "instances")
    assert set(found) == running, (found, running)
    for instance_id, pids in found.items():
        vmms = [p for p in pids if b"-qmp" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(vmms) == 1, (instance_id, pids)


def test_killed_during_a_standby_save(server: EmberServer, source: str) -> None:
    kill_during(server, post(server, f"/instances/{source}/standby"), saving(server, source))
    assert check_all_usable(server)[source] in ("Running", "Standby")


def test_killed_during_the_save_of_a_fork_from_running(server: EmberServer, source: str) -> None:
    body = {"name": "fork-a", "from_running": True}
    kill_during(server, post(server, f"/instances/{source}/fork", body), saving(server, source))
    check_all_usable(server)  # the fork's record is inserted only after the save
    assert [i.name for i in official(server).instances.list()] == ["src"]


def test_killed_during_the_restore_of_a_fork(server: EmberServer, source: str) -> None:
    client = official(server)
    for instance in client.instances.list():  # a fork a previous case may have left
        if instance.id != source:
            client.instances.delete(instance.id)
    body = {"name": "fork-b", "from_running": True}
    fork_vmm = incoming_vmm(server, other_than=source)
    kill_during(server, post(server, f"/instances/{source}/fork", body), fork_vmm)
    states = check_all_usable(server)
    assert len(states) == 2, states
    fork = next(i for i in client.instances.list() if i.name == "fork-b")
    client.instances.delete(fork.id)  # ends its VMM: nothing of it runs on
    assert_vmms(server, {source})


def test_killed_during_a_restore(server: EmberServer, source: str) -> None:
    client = official(server)
    assert client.instances.standby(source).state == "Standby"
    kill_during(server, post(server, f"/instances/{source}/restore"), incoming_vmm(server, source))
    check_all_usable(server)
