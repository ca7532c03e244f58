"""Bad creates leave nothing behind: no record, no file, no process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from ember.testkit.ember_server import EmberServer

pytestmark = pytest.mark.server  # starts a real `ember serve`


def qemu_processes_under(directory: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(directory).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def traces(server: EmberServer) -> tuple[list[str], list[int]]:
    instances = server.data_dir / "instances"
    files = sorted(p.name for p in instances.iterdir()) if instances.exists() else []
    return files, qemu_processes_under(server.data_dir)


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"vcpus": "2"}, 400, "vcpus"),
        ({"vcpus": True}, 400, "vcpus"),
        ({"vcpus": 4096}, 400, "vcpus: 4096 is out of range"),
        ({"size": "64GB0"}, 400, "size"),
        ({"size": "64MB"}, 400, "size: at least 128MB"),
        ({"size": "999TB"}, 400, "more than this host"),
        ({"size": "1" * 40}, 400, "out of range"),
        ({"env": {"A=B": "1"}}, 400, "env: invalid environment variable name"),
        ({"name": "a" * 24}, 400, "shape of an instance id"),
        ({"overlay_size": "999TB"}, 400, "overlay_size"),
        ({"volumes": [{"volume_id": "nope", "mount_path": "/data"}]}, 404, "volume"),
        ({"colour": "red"}, 400, "colour"),
    ],
)
def test_invalid_creates_leave_no_trace(
    shared_server: EmberServer, hello: str, body: dict[str, Any], status: int, says: str
) -> None:
    before = traces(shared_server)
    headers = {"Authorization": f"Bearer {shared_server.token()}"}
    request = {"name": "refused", "image": hello, "size": "256MB", "vcpus": 1, **body}
    answer = httpx.post(f"{shared_server.url}/instances", json=request, headers=headers)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["message"]
    listed = httpx.get(f"{shared_server.url}/instances", headers=headers).json()
    assert all(i["name"] != "refused" for i in listed)
    assert traces(shared_server) == before
