"""Volumes on instances, end to end through the official client with real VMs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from hypeman import BadRequestError, ConflictError, Hypeman
from hypeman.lib.exec import exec as guest_exec

from ember.testkit.ember_server import EmberServer

pytestmark = pytest.mark.vm
SLEEP = ["/bin/sh", "-c", "sleep 100000"]


@pytest.fixture
def client(shared_server: EmberServer) -> Hypeman:
    return Hypeman(base_url=shared_server.url, api_key=shared_server.token())


def run(client: Hypeman, instance: str, script: str) -> tuple[int, str]:
    result = guest_exec(client, instance, ["/bin/sh", "-c", script], wait_for_agent=60)
    return int(result.exit_code), result.output.decode()


def running(client: Hypeman, image: str, name: str, volumes: list[dict[str, object]]) -> str:
    inst = client.instances.create(
        name=name,
        image=image,
        vcpus=1,
        size="256MB",
        cmd=SLEEP,
        volumes=volumes,  # type: ignore[arg-type]
    )
    assert client.instances.wait(inst.id, state="Running", api_timeout="90s").state == "Running"
    return inst.id


def site_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"<h1>site</h1>\n"
        info = tarfile.TarInfo("index.html")
        info.size, info.mode = len(data), 0o640
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def instance_dirs(server: EmberServer) -> list[str]:
    return sorted(p.name for p in (server.data_dir / "instances").iterdir())


def test_volumes_outlive_instances_and_follow_the_sharing_rules(
    client: Hypeman, hello: str, shared_server: EmberServer
) -> None:
    data = client.volumes.create(name="data", size_gb=1)
    site = client.volumes.create_from_archive(site_archive(), name="site", size_gb=1)
    writer = running(client, hello, "writer", [{"volume_id": "data", "mount_path": "/data"}])
    assert run(client, writer, "echo persisted > /data/f && sync") == (0, "")
    # A read-write volume belongs to one instance: a second create is refused, leaving nothing.
    before = instance_dirs(shared_server)
    with pytest.raises(ConflictError, match="read-write"):
        client.instances.create(
            name="thief", image=hello, vcpus=1, size="256MB", cmd=SLEEP,
            volumes=[{"volume_id": data.id, "mount_path": "/data"}],
        )  # fmt: skip
    assert instance_dirs(shared_server) == before
    assert client.volumes.get(data.id).attachments[0].instance_id == writer  # type: ignore[index]
    with pytest.raises(ConflictError):
        client.volumes.delete(data.id)  # attached
    client.instances.delete(writer)

    mounts: list[dict[str, object]] = [
        {"volume_id": "data", "mount_path": "/data", "readonly": True},
        {"volume_id": "site", "mount_path": "/srv", "readonly": True, "overlay": True,
         "overlay_size": "64MB"},
    ]  # fmt: skip
    first = running(client, hello, "reader-1", mounts)
    second = running(client, hello, "reader-2", mounts)
    assert run(client, first, "cat /data/f") == (0, "persisted\n")
    assert run(client, second, "cat /data/f") == (0, "persisted\n")
    code, said = run(client, first, "touch /data/x 2>&1")
    assert code != 0 and "Read-only" in said
    assert run(client, first, "stat -c %a /srv/index.html 2>/dev/null || ls -l /srv")[0] == 0
    assert run(client, first, "cat /srv/index.html") == (0, "<h1>site</h1>\n")
    assert run(client, first, "echo mine > /srv/private")[0] == 0
    assert run(client, second, "test -e /srv/private")[0] != 0  # each overlay is private
    shown = client.instances.get(first).volumes or []
    assert {(v.volume_id, v.readonly) for v in shown} == {(data.id, True), (site.id, True)}

    # An overlay volume's private disk stays plugged in while the VM runs.
    with pytest.raises(ConflictError, match="overlay"):
        client.instances.volumes.detach(site.id, id=second)
    client.instances.stop(second)
    client.instances.volumes.detach(data.id, id=second)
    with pytest.raises(BadRequestError, match="mount_path"):
        client.instances.volumes.attach(data.id, id=second, mount_path="relative")
    after = client.instances.volumes.attach(data.id, id=second, mount_path="/again", readonly=True)
    assert any(v.mount_path == "/again" for v in after.volumes or [])
    for instance in (first, second):
        client.instances.delete(instance)
    client.volumes.delete(site.id)
    client.volumes.delete(data.id)
    assert not (shared_server.data_dir / "volumes" / data.id).exists()
    assert not any(Path(shared_server.data_dir / "instances").iterdir())
