"""What an instance is made of stays whole: races with delete, a server killed mid-create,
and images that move under a stopped instance."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypeman import BadRequestError, Hypeman

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from tests.conftest import push_to_ember

pytestmark = pytest.mark.vm
BOOT = "120s"


def qemu_running(name: str) -> bool:
    return subprocess.run(["pgrep", "-f", f"guest={name}"], capture_output=True).returncode == 0


def nothing_left(server: EmberServer, instance_id: str, name: str) -> None:
    assert not (server.data_dir / "instances" / instance_id).exists()
    assert not Path(f"/run/ember/{instance_id}").exists()
    assert not qemu_running(name)


def create_in_background(server: EmberServer, body: dict[str, Any]) -> list[httpx.Response]:
    answers: list[httpx.Response] = []
    headers = {"Authorization": f"Bearer {server.token()}"}

    def post() -> None:
        with contextlib.suppress(httpx.HTTPError):  # a server killed under it
            answers.append(
                httpx.post(f"{server.url}/instances", json=body, headers=headers, timeout=120)
            )

    threading.Thread(target=post, daemon=True).start()
    return answers


def test_delete_during_create_waits_and_leaves_nothing(shared_server: EmberServer) -> None:
    client = Hypeman(base_url=shared_server.url, api_key=shared_server.token(), max_retries=0)
    image = push_to_ember(shared_server, hello_image(), "integrity", "race")
    for attempt, delay in enumerate((0.02, 0.05, 0.1)):
        name = f"race{attempt}"
        answers = create_in_background(
            shared_server,
            {"name": name, "image": image, "size": "128MB", "cmd": ["/hello", "serve", "80"]},
        )
        time.sleep(delay)
        if not any(i.name == name for i in client.instances.list()):
            _wait_for(answers)  # the create had not inserted its record yet: no race
        client.instances.delete(name)  # waits for a create under way, then undoes it
        answer = _wait_for(answers)
        assert answer.status_code == 201, answer.text
        instance_id = answer.json()["id"]
        nothing_left(shared_server, instance_id, name)


def _wait_for(answers: list[httpx.Response]) -> httpx.Response:
    deadline = time.monotonic() + 120
    while not answers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert answers, "the create never answered"
    return answers[0]


def test_server_killed_mid_create_leaves_no_vm(shared_server: EmberServer) -> None:
    image = push_to_ember(shared_server, hello_image(), "integrity", "kill")
    headers = {"Authorization": f"Bearer {shared_server.token()}"}
    body = {"name": "cut", "image": image, "size": "128MB", "cmd": ["/hello", "serve", "80"]}
    create_in_background(shared_server, body)
    deadline = time.monotonic() + 30
    pid_files: list[Path] = []
    while not pid_files and time.monotonic() < deadline:  # QEMU is starting: cut here
        pid_files = list(Path("/run/ember").glob("*/vmm.pid"))
        pid_files = [p for p in pid_files if b"guest=cut" in _cmdline(p)]
        time.sleep(0.005)
    shared_server.stop(signal.SIGKILL)
    shared_server.start()
    answer = httpx.get(f"{shared_server.url}/instances/cut", headers=headers)
    if answer.status_code == 200:  # it got as far as Initializing: a real instance, adopted
        assert answer.json()["state"] in ("Initializing", "Running")
        httpx.delete(f"{shared_server.url}/instances/cut", headers=headers).raise_for_status()
    else:
        assert answer.status_code == 404
    deadline = time.monotonic() + 15
    while qemu_running("cut") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not qemu_running("cut")


def _cmdline(pid_file: Path) -> bytes:
    try:
        return Path(f"/proc/{int(pid_file.read_text())}/cmdline").read_bytes()
    except (OSError, ValueError):
        return b""


def test_a_stopped_instance_keeps_its_image_when_the_tag_moves(
    shared_server: EmberServer,
) -> None:
    client = Hypeman(base_url=shared_server.url, api_key=shared_server.token(), max_retries=0)
    first = hello_image(env={"GREETING": "first"})
    name = push_to_ember(shared_server, first, "integrity", "moving")
    inst = client.instances.create(
        name="keeper", image=name, size="128MB", cmd=["/hello", "exit", "0"]
    )
    assert client.instances.wait(inst.id, state="Stopped", api_timeout=BOOT).state == "Stopped"

    second = hello_image(env={"GREETING": "second"})
    assert second.digest != first.digest
    push_to_ember(shared_server, second, "integrity", "moving")
    images = shared_server.data_dir / "images"
    assert (images / first.digest).exists()  # still the stopped instance's root disk

    client.instances.start(inst.id)
    assert client.instances.wait(inst.id, state="Stopped", api_timeout=BOOT).state == "Stopped"
    app = "\n".join(client.instances.logs(inst.id, source="app", tail=1000))
    assert app.count("greeting=first") == 2 and "greeting=second" not in app

    # The tag's new content is not what the instance uses: it can go, the instance stays.
    client.images.delete(name)
    assert not (images / second.digest).exists()
    assert (images / first.digest).exists()
    client.instances.delete(inst.id)
    assert not (images / first.digest).exists()  # nothing needs it any more


def test_wait_ends_when_the_state_can_no_longer_come(shared_server: EmberServer) -> None:
    client = Hypeman(base_url=shared_server.url, api_key=shared_server.token(), max_retries=0)
    image = push_to_ember(shared_server, hello_image(), "integrity", "crash")
    inst = client.instances.create(
        name="crasher", image=image, size="128MB", cmd=["/hello", "exit", "9"]
    )
    # The workload exits at once: Running may never be seen, and Stopped will not change.
    waited = client.instances.wait(inst.id, state="Running", api_timeout="300s")
    assert not waited.timed_out
    if waited.state != "Running":
        assert waited.state == "Stopped"
    stopped = client.instances.wait(inst.id, state="Stopped", api_timeout=BOOT)
    assert stopped.state == "Stopped" and client.instances.get(inst.id).exit_code == 9
    again = client.instances.wait(inst.id, state="Running", api_timeout="300s")
    assert (again.state, again.timed_out) == ("Stopped", False)
    client.instances.delete(inst.id, graceful_shutdown=True)


def test_start_overrides_and_fields_the_server_cannot_honour(shared_server: EmberServer) -> None:
    client = Hypeman(base_url=shared_server.url, api_key=shared_server.token(), max_retries=0)
    image = push_to_ember(shared_server, hello_image(), "integrity", "start")
    inst = client.instances.create(
        name="rerun", image=image, size="128MB", cmd=["/hello", "exit", "0"]
    )
    assert inst.platform == "linux/amd64"
    assert client.instances.wait(inst.id, state="Stopped", api_timeout=BOOT).state == "Stopped"

    # start's cmd replaces the instance's from then on (Hypeman: "omit to keep").
    client.instances.start(inst.id, cmd=["/hello", "exit", "7"])
    client.instances.wait(inst.id, state="Stopped", api_timeout=BOOT)
    assert client.instances.get(inst.id).exit_code == 7
    client.instances.start(inst.id)
    client.instances.wait(inst.id, state="Stopped", api_timeout=BOOT)
    assert client.instances.get(inst.id).exit_code == 7
    with pytest.raises(BadRequestError, match="cmd"):
        client.instances.start(inst.id, extra_body={"cmd": "not a list"})
    with pytest.raises(BadRequestError, match="entrypoint or cmd"):
        client.instances.start(inst.id, cmd=[])  # the image has no entrypoint: nothing to run
    assert client.instances.get(inst.id).state == "Stopped"

    # Bad values and fields of features this server lacks are refused by name, never ignored.
    with pytest.raises(BadRequestError, match="ttl"):
        client.instances.create(name="expiring", image=image, ttl="soon")
    with pytest.raises(BadRequestError, match="restart_policy"):
        client.instances.create(
            name="restarting",
            image=image,
            extra_body={"restart_policy": {"policy": "sometimes"}},
        )
    with pytest.raises(BadRequestError, match="gpu"):
        client.instances.create(name="gpu", image=image, gpu={"profile": "L40S-1Q"})
    with pytest.raises(BadRequestError, match="no_such_field"):
        client.instances.create(name="typo", image=image, extra_body={"no_such_field": 1})
    with pytest.raises(BadRequestError, match="overlay_size: at least 64MB"):
        client.instances.create(name="cramped", image=image, overlay_size="1MB")
    with pytest.raises(BadRequestError, match="platform"):
        client.instances.create(name="arm", image=image, platform="linux/arm64")
    with pytest.raises(BadRequestError, match="ttl"):
        client.instances.update(inst.id, ttl="-1h")
    assert client.instances.update(inst.id).id == inst.id
    assert {i.name for i in client.instances.list()} >= {"rerun"}
    refused = {"expiring", "restarting", "gpu", "typo", "arm"}
    assert not refused & {i.name for i in client.instances.list()}
    client.instances.delete(inst.id)
