"""Volumes attached to and detached from Running instances, through the official client
(real VMs: the volume slots of ember/volumes/slots.py and the agent's mounts)."""

from __future__ import annotations

import threading

import pytest
from hypeman import ConflictError, Hypeman

from ember.testkit.ember_server import EmberServer
from tests.e2e.test_instance_volumes import SLEEP, run

pytestmark = pytest.mark.vm


@pytest.fixture
def client(shared_server: EmberServer) -> Hypeman:
    return Hypeman(base_url=shared_server.url, api_key=shared_server.token())


def running(client: Hypeman, image: str, name: str, volumes: list[dict[str, object]]) -> str:
    inst = client.instances.create(
        name=name, image=image, vcpus=1, size="256MB", cmd=SLEEP,
        volumes=volumes,  # type: ignore[arg-type]
    )  # fmt: skip
    assert client.instances.wait(inst.id, state="Running", api_timeout="90s").state == "Running"
    return inst.id


def mounted(client: Hypeman, instance: str) -> list[tuple[str, str, bool]]:
    return [(v.volume_id, v.mount_path, bool(v.readonly))
            for v in client.instances.get(instance).volumes or []]  # fmt: skip


def test_a_volume_moves_between_running_instances(client: Hypeman, hello: str) -> None:
    volume = client.volumes.create(name="hot", size_gb=1)
    boot = client.volumes.create(name="boot", size_gb=1)
    first = running(client, hello, "hot-writer", [])
    # A volume mounted at boot (a read-only device for the VM's life) comes off it too.
    at_boot = {"volume_id": boot.id, "mount_path": "/boot-vol", "readonly": True}
    second = running(client, hello, "hot-reader", [at_boot])
    assert run(client, second, "grep -c ' /boot-vol ' /proc/mounts")[1].strip() == "1"
    client.instances.volumes.detach(boot.id, id=second)
    assert run(client, second, "grep -c ' /boot-vol ' /proc/mounts")[1].strip() == "0"
    assert mounted(client, second) == []

    answer = client.instances.volumes.attach(volume.id, id=first, mount_path="/data/hot")
    assert answer.state == "Running"
    assert mounted(client, first) == [(volume.id, "/data/hot", False)]
    assert run(client, first, "echo written-while-running > /data/hot/f && sync") == (0, "")
    assert run(client, first, "grep ' /data/hot ' /proc/mounts | cut -d' ' -f3,4")[1].startswith(
        "ext4 rw"
    )

    # The guest still uses it: the detach is refused and the volume stays where it was.
    user = threading.Thread(target=run, args=(client, first, "cd /data/hot && sleep 1000"))
    user.start()
    busy = (
        "for i in $(seq 100); do ls -l /proc/*/cwd | grep -q /data/hot && exit 0; sleep 0.2; done"
    )
    assert run(client, first, busy)[0] == 0
    with pytest.raises(ConflictError, match="busy"):
        client.instances.volumes.detach(volume.id, id=first)
    assert mounted(client, first) == [(volume.id, "/data/hot", False)]
    assert run(client, first, "cat /data/hot/f") == (0, "written-while-running\n")
    # Read-write belongs to one instance at a time, running or not.
    with pytest.raises(ConflictError, match="read-write"):
        client.instances.volumes.attach(volume.id, id=second, mount_path="/in", readonly=True)

    stop_user = (
        'for p in /proc/[0-9]*; do [ "$(readlink $p/cwd)" = /data/hot ] && kill ${p#/proc/}; done'
    )
    run(client, first, stop_user)
    user.join(timeout=60)
    answer = client.instances.volumes.detach(volume.id, id=first)
    assert answer.state == "Running" and mounted(client, first) == []
    assert run(client, first, "grep -c ' /data/hot ' /proc/mounts")[1].strip() == "0"
    # A mount the guest refuses (the path is under a file of the image): nothing is kept.
    with pytest.raises(ConflictError, match=r"could not mount .*Not a directory"):
        client.instances.volumes.attach(volume.id, id=first, mount_path="/hello/x")
    assert mounted(client, first) == []

    client.instances.volumes.attach(volume.id, id=second, mount_path="/in", readonly=True)
    assert run(client, second, "cat /in/f") == (0, "written-while-running\n")
    code, said = run(client, second, "touch /in/x 2>&1")
    assert code != 0 and "Read-only" in said

    # A standby and restore bring the VM back with the volume where it was attached.
    client.instances.standby(second)
    assert client.instances.restore(second).state == "Running"
    assert run(client, second, "cat /in/f") == (0, "written-while-running\n")
    client.instances.volumes.detach(volume.id, id=second)

    # Back on the first instance, read-write again, in the slot the reader used before.
    client.instances.volumes.attach(volume.id, id=first, mount_path="/again")
    assert run(client, first, "cat /again/f && echo more >> /again/f") == (
        0,
        "written-while-running\n",
    )
    for instance in (first, second):
        client.instances.delete(instance)
    client.volumes.delete(volume.id)
    client.volumes.delete(boot.id)
