"""The VMM jail with real VMs: its own uid, no capabilities, seccomp, an empty root,
kernel limits, and a guest that outgrows its memory limit stopped with a clear reason."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypeman import Hypeman

from ember.config import Settings
from ember.hypervisor.jail import detect_cgroups
from ember.instances.jail import JAIL_ROOT, PIDS_BASE
from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from tests.conftest import push_to_ember, running_server

pytestmark = pytest.mark.vm
BOOT = "120s"  # TCG on a shared 2-core machine
MiB = 1 << 20
OVERHEAD = Settings.model_fields["jail_memory_overhead_bytes"].default


def vmm_pid(server: EmberServer, instance_id: str) -> int:
    """The QEMU of an instance: the process whose command line names its QMP socket."""
    needle = f"/{instance_id}/qmp.sock".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "cmdline").read_bytes():
                    return int(proc.name)
            except OSError:
                continue
    raise AssertionError(f"no VMM process for {instance_id}")


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, value in (line.split(":", 1) for line in lines)}


def can_open_as(uid: int, path: Path) -> str:
    """Try to read `path` as `uid:uid` with no supplementary groups (with cat: the test's
    own Python may sit where that uid cannot reach)."""
    done = subprocess.run(["/bin/cat", str(path)], user=uid, group=uid, extra_groups=[],
                          capture_output=True, text=True, cwd="/")  # fmt: skip
    return "opened" if done.returncode == 0 else done.stderr.strip().rsplit(": ", 1)[-1]


@pytest.fixture(scope="module")
def server() -> Iterator[EmberServer]:
    with running_server() as server:
        yield server


@pytest.fixture(scope="module")
def client(server: EmberServer) -> Hypeman:
    return Hypeman(base_url=server.url, api_key=server.token(), max_retries=0)


@pytest.fixture(scope="module")
def image(server: EmberServer) -> str:
    return push_to_ember(server, hello_image(), "hello", "latest")


def test_each_vmm_is_confined_and_its_uid_released(
    client: Hypeman, server: EmberServer, image: str
) -> None:
    serve = ["/hello", "serve", "8080"]
    first = client.instances.create(name="jailed-a", image=image, size="256MB", cmd=serve)
    second = client.instances.create(name="jailed-b", image=image, size="256MB", vcpus=2,
                                     disk_io_bps="20MB/s", cmd=serve)  # fmt: skip
    for inst in (first, second):
        assert client.instances.wait(inst.id, state="Running", api_timeout=BOOT).state == "Running"
    pids = {inst.id: vmm_pid(server, inst.id) for inst in (first, second)}
    uids = {}
    for inst_id, pid in pids.items():
        status = status_of(pid)
        uid = int(status["Uid"].split()[0])
        assert uid != 0 and status["Uid"].split() == [str(uid)] * 4
        assert status["Gid"].split() == [str(uid)] * 4
        assert status["Groups"] in ("", str(uid))  # no group but its own
        assert (status["CapEff"], status["CapPrm"]) == ("0" * 16, "0" * 16)
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"
        # Chrooted into the empty directory: no host path can be opened by name.
        root = Path(f"/proc/{pid}/root").resolve()
        assert root == (Path("/run/ember") / JAIL_ROOT).resolve()
        assert list(root.iterdir()) == []
        uids[inst_id] = uid
    assert uids[first.id] != uids[second.id]

    # From the first VMM's uid: the other instance's disk and the JWT secret are closed.
    other_disk = server.data_dir / "instances" / second.id / "overlay.ext4"
    assert other_disk.exists()
    assert can_open_as(uids[first.id], other_disk) == "Permission denied"
    assert can_open_as(uids[first.id], server.data_dir / "jwt.secret") == "Permission denied"
    # Its QMP and agent sockets: Ember's alone.
    qmp = Path("/run/ember") / first.id / "qmp.sock"
    assert can_open_as(uids[first.id], qmp) == "Permission denied"

    # The kernel's limits: memory = guest + overhead, CPU, processes, disk rate.
    cgroups = detect_cgroups()
    assert cgroups is not None
    dirs = cgroups.dirs(second.id)
    assert pids[second.id] in read_ints(dirs["memory"] / "cgroup.procs")
    if cgroups.version == 1:
        limit = read_ints(dirs["memory"] / "memory.limit_in_bytes")[0]
        assert limit == 256 * MiB + OVERHEAD
        quota = read_ints(dirs["cpu"] / "cpu.cfs_quota_us")[0]
        assert quota == int(2.5 * read_ints(dirs["cpu"] / "cpu.cfs_period_us")[0])
        assert read_ints(dirs["pids"] / "pids.max")[0] == PIDS_BASE + 2
        throttle = (dirs["blkio"] / "blkio.throttle.write_bps_device").read_text()
        assert throttle.split()[1] == str(20 * MiB)
    else:
        assert read_ints(dirs["memory"] / "memory.max")[0] == 256 * MiB + OVERHEAD

    # Delete gives the uid back: the next instance gets the lowest free one again.
    client.instances.delete(first.id)
    assert not any(p.exists() for p in cgroups.dirs(first.id).values())
    third = client.instances.create(name="jailed-c", image=image, size="256MB", cmd=serve)
    assert int(status_of(vmm_pid(server, third.id))["Uid"].split()[0]) == uids[first.id]
    for inst in (second, third):
        client.instances.delete(inst.id)


def read_ints(path: Path) -> list[int]:
    return [int(word) for word in path.read_text().split()]


def test_a_guest_over_its_memory_limit_is_stopped_with_the_reason() -> None:
    """With no room for QEMU beyond the guest's RAM, a guest that fills its RAM takes QEMU
    over the limit: the kernel kills that VMM alone and the instance says why."""
    overhead = 32 * MiB
    env = {"EMBER_JAIL_MEMORY_OVERHEAD_BYTES": str(overhead)}
    with running_server(env=env) as server:
        client = Hypeman(base_url=server.url, api_key=server.token(), max_retries=0)
        image = push_to_ember(server, hello_image(), "hello", "latest")
        # dd's 300 MB buffer is guest RAM that QEMU must back: 400 MB + 32 MB is not enough.
        hog = client.instances.create(
            name="hog", image=image, size="400MB",
            cmd=["sh", "-c", "sleep 2; dd if=/dev/zero of=/dev/null bs=300M count=2; sleep 600"],
        )  # fmt: skip
        stopped = client.instances.wait(hog.id, state="Stopped", api_timeout="300s")
        assert stopped.state == "Stopped"
        message = client.instances.get(hog.id).exit_message or ""
        assert "exceeded its memory limit" in message, message
        assert server.process is not None and server.process.poll() is None  # Ember lives on
        client.instances.delete(hog.id)


def confinement_of(server: EmberServer) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/capabilities",
                       headers={"Authorization": f"Bearer {server.token()}"}).json()  # fmt: skip
    qemu = next(r for r in answer["runtimes"] if r["name"] == "qemu")
    confinement: dict[str, Any] = qemu["confinement"]
    return confinement


def test_capabilities_say_which_confinement_is_in_force(server: EmberServer) -> None:
    on = confinement_of(server)
    assert on["enabled"] is True
    assert set(on["in_force"]) >= {"user", "filesystem", "seccomp", "limits"}
    with running_server(env={"EMBER_JAIL": "off"}) as unjailed:
        off = confinement_of(unjailed)
    assert off["enabled"] is False and "EMBER_JAIL=off" in str(off["not_in_force"])
