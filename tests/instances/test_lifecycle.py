"""Instances end to end: real server, real QEMU VMs, the official `hypeman` client."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypeman import BadRequestError, ConflictError, Hypeman, NotFoundError

from ember.testkit import build_image, busybox_layer
from ember.testkit.ember_server import EmberServer
from tests.conftest import push_to_ember, unallocatable_memory

pytestmark = pytest.mark.vm
BOOT = "120s"  # TCG on a shared 2-core machine


@pytest.fixture
def client(shared_server: EmberServer) -> Hypeman:
    return Hypeman(base_url=shared_server.url, api_key=shared_server.token(), max_retries=0)


def app_log(client: Hypeman, ref: str) -> list[str]:
    return list(client.instances.logs(ref, source="app", tail=1000))


def test_create_run_exit_and_logs(client: Hypeman, hello: str, shared_server: EmberServer) -> None:
    created = client.instances.create(
        name="exits", image=hello, vcpus=1, size="256MB",
        env={"GREETING": "bonjour"}, cmd=["/hello", "exit", "3"],
    )  # fmt: skip
    assert created.state in ("Initializing", "Running", "Stopped")
    waited = client.instances.wait(created.id, state="Stopped", api_timeout=BOOT)
    assert not waited.timed_out and waited.state == "Stopped"
    inst = client.instances.get("exits")
    assert (inst.exit_code, inst.exit_message) == (3, "exited with code 3")
    # The app log holds the program's output only; the kernel's console is the VMM's.
    assert app_log(client, inst.id) == ["hello from ember: greeting=bonjour args=exit,3"]
    operations = list(client.instances.logs(inst.id, source="hypeman"))
    assert any("state -> Running" in line for line in operations)
    assert any("state -> Stopped" in line for line in operations)
    vmm = list(client.instances.logs(inst.id, source="vmm"))
    assert any("qemu-system-x86_64 -name guest=exits" in line for line in vmm)
    assert any("started pid" in line for line in vmm)
    assert any("reboot: Power down" in line for line in vmm)
    # Stopped -> stop is a conflict; unknown ids are 404.
    with pytest.raises(ConflictError):
        client.instances.stop(inst.id)
    with pytest.raises(NotFoundError):
        client.instances.get("no-such-instance")
    client.instances.delete(inst.id)
    assert not (shared_server.data_dir / "instances" / inst.id).exists()
    with pytest.raises(NotFoundError):
        client.instances.get(inst.id)


def test_stop_start_wait_and_follow(
    client: Hypeman, hello: str, shared_server: EmberServer
) -> None:
    inst = client.instances.create(
        name="server", image=hello, vcpus=1, size="256MB", cmd=["/hello", "serve", "8080"]
    )
    running = client.instances.wait(inst.id, state="Running", api_timeout=BOOT)
    assert running.state == "Running" and not running.timed_out
    short = client.instances.wait(inst.id, state="Stopped", api_timeout="1s")
    assert short.timed_out and short.state == "Running"
    assert any(i.id == inst.id for i in client.instances.list(state="Running"))

    # Follow streams lines as they are written, and ends when the instance has stopped.
    stream = client.instances.logs(inst.id, follow=True, tail=0, source="hypeman")
    stopped = client.instances.stop(inst.id)
    assert stopped.state == "Stopped"
    seen = list(stream)
    assert any("SIGTERM" in line for line in seen)
    assert any("state -> Stopped" in line for line in seen)
    assert "hello: stopping gracefully" in app_log(client, inst.id)

    restarted = client.instances.start(inst.id)
    assert restarted.state in ("Initializing", "Running")
    assert client.instances.wait(inst.id, state="Running", api_timeout=BOOT).state == "Running"
    assert client.instances.get(inst.id).exit_code is None

    # A VMM killed behind Ember's back: Stopped, and what QEMU said is in the vmm log.
    pid = int(Path(f"/run/ember/{inst.id}/vmm.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    gone = client.instances.wait(inst.id, state="Stopped", api_timeout=BOOT)
    assert gone.state == "Stopped"
    assert client.instances.get(inst.id).exit_message == (
        "the VMM exited before the workload reported an exit"
    )
    vmm = list(client.instances.logs(inst.id, source="vmm"))
    assert any("terminating on signal 15" in line for line in vmm)
    client.instances.delete(inst.id)
    assert not (shared_server.data_dir / "instances" / inst.id).exists()
    assert not any(p for p in Path("/run/ember").glob(f"{inst.id}*"))


def test_bad_requests_are_clear(client: Hypeman, hello: str, shared_server: EmberServer) -> None:
    with pytest.raises(BadRequestError, match="name"):
        client.instances.create(name="Bad_Name", image=hello)
    with pytest.raises(BadRequestError, match="size"):
        client.instances.create(name="ok", image=hello, size="lots")
    with pytest.raises(BadRequestError, match=r"firecracker.*not available"):
        client.instances.create(name="ok", image=hello, hypervisor="firecracker")
    with pytest.raises(BadRequestError, match="hotplug"):
        client.instances.create(name="ok", image=hello, hotplug_size="1GB")
    with pytest.raises(NotFoundError, match="image"):
        client.instances.create(name="ok", image="127.0.0.1:1/none:latest")
    assert client.instances.list() == [] or all(i.name != "ok" for i in client.instances.list())
    leftovers = list((shared_server.data_dir / "instances").iterdir())
    assert all(client.instances.get(p.name) for p in leftovers)


def test_vm_survives_server_restart(hello: str, shared_server: EmberServer) -> None:
    client = Hypeman(base_url=shared_server.url, api_key=shared_server.token(), max_retries=0)
    inst = client.instances.create(
        name="survivor", image=hello, vcpus=1, size="256MB", cmd=["/hello", "serve", "8080"]
    )
    assert client.instances.wait(inst.id, state="Running", api_timeout=BOOT).state == "Running"
    pid = int(subprocess.check_output(["pgrep", "-f", "guest=survivor"]).split()[0])

    shared_server.stop(signal.SIGKILL)  # no chance to clean up
    shared_server.start()
    client = Hypeman(base_url=shared_server.url, api_key=shared_server.token(), max_retries=0)
    assert client.instances.get(inst.id).state == "Running"
    assert int(subprocess.check_output(["pgrep", "-f", "guest=survivor"]).split()[0]) == pid
    operations = list(client.instances.logs(inst.id, source="hypeman"))
    assert any("adopted running VMM" in line for line in operations)

    assert client.instances.stop(inst.id).state == "Stopped"
    client.instances.delete(inst.id)
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", "guest=survivor"], check=False).returncode == 0:
        assert time.monotonic() < deadline, "the VMM outlived its instance"
        time.sleep(0.1)


def test_image_in_use_cannot_be_deleted(client: Hypeman, hello: str) -> None:
    inst = client.instances.create(name="user", image=hello, vcpus=1, size="256MB")
    with pytest.raises(ConflictError, match="used by"):
        client.images.delete(hello)
    client.instances.delete(inst.id)


def test_sse_format(shared_server: EmberServer, hello: str) -> None:
    headers = {"Authorization": f"Bearer {shared_server.token()}"}
    answer = httpx.get(f"{shared_server.url}/instances/nope/logs", headers=headers)
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"


def test_failed_create_leaves_nothing(client: Hypeman, shared_server: EmberServer) -> None:
    image = build_image([busybox_layer()])  # no entrypoint, no cmd: nothing to run
    name = push_to_ember(shared_server, image, "nothing/to-run", "v1")
    before = sorted(p.name for p in (shared_server.data_dir / "instances").iterdir())
    with pytest.raises(BadRequestError, match="no entrypoint or cmd"):
        client.instances.create(name="empty", image=name, vcpus=1, size="256MB")
    with pytest.raises(NotFoundError):
        client.instances.get("empty")
    after = sorted(p.name for p in (shared_server.data_dir / "instances").iterdir())
    assert after == before
    assert subprocess.run(["pgrep", "-f", "guest=empty"], check=False).returncode != 0


def test_lookup_by_prefix_and_tag_filters(client: Hypeman, hello: str) -> None:
    inst = client.instances.create(
        name="tagged", image=hello, vcpus=1, size="256MB", tags={"team": "core", "env": "ci"},
        cmd=["/hello"],
    )  # fmt: skip
    assert client.instances.get(inst.id[:10]).id == inst.id
    assert [i.id for i in client.instances.list(tags={"team": "core"})] == [inst.id]
    assert client.instances.list(tags={"team": "other"}) == []
    client.instances.delete("tagged")


def test_more_memory_than_the_host_has_is_refused_before_qemu_starts(
    client: Hypeman, hello: str, shared_server: EmberServer
) -> None:
    before = sorted(p.name for p in (shared_server.data_dir / "instances").iterdir())
    with pytest.raises(BadRequestError, match="more than this host's") as failed:
        client.instances.create(name="too-big", image=hello, vcpus=1, size=unallocatable_memory())
    assert failed.value.status_code == 400
    with pytest.raises(NotFoundError):
        client.instances.get("too-big")
    assert sorted(p.name for p in (shared_server.data_dir / "instances").iterdir()) == before


def test_overlay_too_large_for_the_host_is_a_bad_request(
    client: Hypeman, hello: str, shared_server: EmberServer
) -> None:
    instances = shared_server.data_dir / "instances"
    before = sorted(p.name for p in instances.iterdir())
    runtime_before = sorted(p.name for p in Path("/run/ember").iterdir())
    with pytest.raises(BadRequestError, match="overlay_size: 999TB") as refused:
        client.instances.create(
            name="huge-overlay", image=hello, vcpus=1, size="256MB", overlay_size="999TB"
        )
    assert refused.value.status_code == 400
    with pytest.raises(NotFoundError):
        client.instances.get("huge-overlay")
    assert all(i.name != "huge-overlay" for i in client.instances.list())
    assert sorted(p.name for p in instances.iterdir()) == before
    assert sorted(p.name for p in Path("/run/ember").iterdir()) == runtime_before


def test_follow_ends_cleanly_when_the_instance_is_deleted(
    client: Hypeman, hello: str, shared_server: EmberServer
) -> None:
    inst = client.instances.create(
        name="followed", image=hello, vcpus=1, size="256MB", cmd=["/hello", "serve", "8080"]
    )
    stream = client.instances.logs(inst.id, follow=True, tail=100, source="hypeman")
    seen: list[str] = []
    errors: list[Exception] = []

    def read() -> None:
        try:
            seen.extend(stream)
        except Exception as exc:  # e.g. httpx.RemoteProtocolError: incomplete chunked read
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.5)
    client.instances.delete(inst.id)
    reader.join(15)
    assert not reader.is_alive(), "the log stream did not end after the delete"
    assert errors == []
    assert any("creating from image" in line for line in seen)
    assert not (shared_server.data_dir / "instances" / inst.id).exists()
