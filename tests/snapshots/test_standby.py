"""Standby and restore end to end: a real server, real QEMU VMs, the official client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from hypeman import APIStatusError, BadRequestError, ConflictError, Hypeman
from hypeman.lib.exec import exec as hm_exec

from ember.testkit.ember_server import EmberServer

pytestmark = pytest.mark.vm
BOOT = "120s"  # TCG on a shared 2-core machine
# The workload: a counter in the guest's memory, written to a tmpfs; it only goes on
# from where it was if the processes survive.
COUNTER = (
    "mkdir -p /run/t && mount -t tmpfs t /run/t && "
    "i=0; while true; do i=$((i+1)); echo $i > /run/t/next; mv /run/t/next /run/t/count; "
    "sleep 0.05; done"
)


@pytest.fixture
def client(shared_server: EmberServer) -> Hypeman:
    return Hypeman(base_url=shared_server.url, api_key=shared_server.token(), max_retries=0)


@pytest.fixture
def vm(client: Hypeman, hello: str) -> Iterator[str]:
    inst = client.instances.create(
        name="counter", image=hello, vcpus=1, size="256MB", cmd=["sh", "-c", COUNTER]
    )
    assert client.instances.wait(inst.id, state="Running", api_timeout=BOOT).state == "Running"
    yield inst.id
    client.instances.delete(inst.id)


def run(client: Hypeman, ref: str, command: str) -> str:
    result = hm_exec(client, ref, ["sh", "-c", command], wait_for_agent=30)
    assert result.exit_code == 0, result.output
    return result.output.decode().strip()


def count(client: Hypeman, ref: str) -> int:
    return int(run(client, ref, "cat /run/t/count 2>/dev/null || echo 0"))


def standby_dir(server: EmberServer, instance_id: str) -> Path:
    return server.data_dir / "instances" / instance_id / "standby"


def wait_for(predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_standby_restore_keeps_processes_files_and_clock(
    client: Hypeman, vm: str, shared_server: EmberServer
) -> None:
    # Beside the counter: a file on the overlay disk, one in the tmpfs.
    run(client, vm, "echo kept > /overlay-file && sync")
    run(client, vm, "echo tmpfs-kept > /run/t/file")
    wait_for(lambda: count(client, vm) > 5)
    before = count(client, vm)

    stood = client.instances.standby(vm)
    assert (stood.state, stood.has_snapshot) == ("Standby", True)
    assert client.instances.get(vm).state == "Standby"
    with pytest.raises(ConflictError):
        client.instances.standby(vm)  # already in standby
    time.sleep(3)  # the guest clock must not lag by this after the restore

    restored = client.instances.restore(vm)
    assert (restored.state, restored.has_snapshot) == ("Running", False)
    after = count(client, vm)
    assert after >= before  # it went on from where it was, not from 0
    wait_for(lambda: count(client, vm) > after)  # and it keeps counting
    assert run(client, vm, "cat /overlay-file") == "kept"
    assert run(client, vm, "cat /run/t/file") == "tmpfs-kept"
    wait_for(lambda: abs(int(run(client, vm, "date +%s")) - time.time()) < 2, timeout=15)
    assert not standby_dir(shared_server, vm).exists()
    with pytest.raises(ConflictError):
        client.instances.restore(vm)  # running: nothing to restore


@pytest.mark.parametrize("algorithm", ["zstd", "lz4"])
def test_compressed_standby_restores(
    client: Hypeman, vm: str, shared_server: EmberServer, algorithm: Literal["zstd", "lz4"]
) -> None:
    wait_for(lambda: count(client, vm) > 3)

    # Restored while the compression is pending or running: it is cancelled, raw kept.
    client.instances.standby(vm, compression={"enabled": True, "algorithm": algorithm})
    client.instances.restore(vm)
    before = count(client, vm)
    assert before > 3

    # Restored once compressed: the memory is decompressed first.
    level = {"zstd": 3, "lz4": 1}[algorithm]
    client.instances.standby(
        vm, compression={"enabled": True, "algorithm": algorithm, "level": level}
    )
    suffix = "zst" if algorithm == "zstd" else "lz4"
    snapshot = standby_dir(shared_server, vm)
    # The compressed file is renamed into place once complete; the raw payload then goes.
    wait_for(lambda: any(p.suffix == f".{suffix}" for p in snapshot.iterdir()))
    vmm_log = client.instances.logs(vm, source="vmm", tail=1000)
    in_file = any("memory-backend-file" in line for line in vmm_log)
    raw = snapshot.parent / "memory.ram" if in_file else snapshot / "vmstate"
    wait_for(lambda: not raw.exists())
    client.instances.restore(vm)
    count_after_restore = count(client, vm)
    assert count_after_restore >= before
    wait_for(lambda: count(client, vm) > count_after_restore)


def test_bad_compression_is_refused(client: Hypeman, vm: str) -> None:
    with pytest.raises(BadRequestError, match="level"):
        client.instances.standby(vm, compression={"enabled": True, "level": 30})
    with pytest.raises(BadRequestError, match="compression_delay"):
        client.instances.standby(vm, compression_delay="soon")
    assert client.instances.get(vm).state == "Running"


def test_failed_restore_keeps_the_snapshot(
    client: Hypeman, vm: str, shared_server: EmberServer
) -> None:
    client.instances.standby(vm)
    state = standby_dir(shared_server, vm) / "vmstate"
    aside = state.with_name("aside")
    state.rename(aside)  # the restore cannot read it: it must fail cleanly
    with pytest.raises(APIStatusError) as failed:
        client.instances.restore(vm)
    assert failed.value.status_code == 503 and "saved VM is kept" in str(failed.value)
    inst = client.instances.get(vm)
    assert (inst.state, inst.has_snapshot) == ("Standby", True)
    assert inst.state_error and "restore failed" in inst.state_error
    aside.rename(state)
    assert client.instances.restore(vm).state == "Running"
    assert client.instances.get(vm).state_error is None
