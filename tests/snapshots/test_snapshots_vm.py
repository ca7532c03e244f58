"""Named snapshots, forks and schedules end to end: real VMs, the official client, an
Ember server inside a namespace this test makes (guests are reached only there)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypeman import BadRequestError, ConflictError, Hypeman, NotFoundError
from hypeman.lib.exec import exec as hm_exec

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from ember.testkit.netns import in_netns
from tests.conftest import fetch, push_to_ember, running_server

pytestmark = pytest.mark.vm
BOOT = "120s"
SERVE = ["/hello", "serve", "8080"]


@pytest.fixture(scope="module")
def server(ns: str) -> Iterator[EmberServer]:
    env = {"EMBER_SNAPSHOT_SCHEDULE_TICK_SECONDS": "0.5"}  # the tick, not the 1m rule
    with running_server(ns, env=env) as server:
        yield server


def official(server: EmberServer) -> Hypeman:
    return Hypeman(base_url=server.url, api_key=server.token(), max_retries=0, timeout=180)


def run(client: Hypeman, ref: str, command: str) -> str:
    result = hm_exec(client, ref, ["sh", "-c", command], wait_for_agent=30)
    assert result.exit_code == 0, result.output
    return result.output.decode().strip()


def ip(instance: Any) -> str:
    assert instance.network is not None and instance.network.ip
    return str(instance.network.ip)


def running(client: Hypeman, name: str, image: str) -> Any:
    inst = client.instances.create(name=name, image=image, vcpus=1, size="256MB", cmd=SERVE)
    assert client.instances.wait(inst.id, state="Running", api_timeout=BOOT).state == "Running"
    return client.instances.get(inst.id)


def image(server: EmberServer) -> str:
    return push_to_ember(server, hello_image(), "hello", "snap")


def snapshots_and_forks(server: EmberServer) -> dict[str, Any]:
    client, out = official(server), dict[str, Any]()
    src = running(client, "src", image(server))
    run(client, "src", "echo one > /marker && sync")

    snap = client.instances.snapshots.create(src.id, kind="Standby", name="snap1", tags={"t": "1"})
    out["snap"] = snap.model_dump()
    out["src_after_snapshot"] = client.instances.get(src.id).state
    run(client, "src", "echo two > /marker && sync")
    out["by_filters"] = [
        [s.id for s in client.snapshots.list(**f)]
        for f in ({"source_instance_id": src.id}, {"kind": "Stopped"}, {"name": "snap1"},
                  {"tags": {"t": "1"}})
    ]  # fmt: skip
    with pytest.raises(ConflictError):  # the name is taken for this instance
        client.instances.snapshots.create(src.id, kind="Standby", name="snap1")
    with pytest.raises(ConflictError):  # Running: restore only into a stopped instance
        client.instances.snapshots.restore(snap.id, id=src.id)

    # A fork of the snapshot runs beside its source: its own IP, MAC and name.
    fork = client.snapshots.fork(snap.id, name="fork1")
    out["fork"] = fork.model_dump()
    out["fork_marker"] = run(client, "fork1", "cat /marker")
    out["fork_hostname"] = run(client, "fork1", "hostname")
    out["fork_eth0"] = run(client, "fork1", "cat /sys/class/net/eth0/address")
    out["ips"] = (
        ip(src),
        ip(fork),
        src.network.mac if src.network else None,
        fork.network.mac if fork.network else None,
    )
    out["answers"] = [fetch(ip(src)), fetch(ip(fork))]

    # The snapshot back into its (stopped) source: the marker is as it was then.
    client.instances.stop(src.id)
    restored = client.instances.snapshots.restore(snap.id, id=src.id)
    out["restored"] = (restored.state, run(client, "src", "cat /marker"))
    out["answers_after_restore"] = [fetch(ip(src)), fetch(ip(fork))]

    # Fork from a running instance: standby, copy, restore the source.
    fork2 = client.instances.fork(src.id, name="fork2", from_running=True)
    out["fork2"] = (fork2.state, ip(fork2), client.instances.get(src.id).state)
    out["answers_three"] = [fetch(ip) for ip in (ip(src), ip(fork),
                                                 ip(fork2))]  # fmt: skip
    client.instances.delete(fork2.id)
    with pytest.raises(ConflictError):
        client.instances.fork(src.id, name="fork3")  # Running without from_running

    # Stopped snapshot: disks only, restored into the stopped instance.
    client.instances.stop("fork1")
    cold = client.instances.snapshots.create("fork1", kind="Stopped", name="cold")
    out["cold"] = cold.model_dump()
    with pytest.raises(BadRequestError):
        client.instances.snapshots.restore(cold.id, id="fork1", target_state="Standby")
    vol = client.volumes.create(name="rw-vol", size_gb=1)
    client.instances.volumes.attach(vol.id, id="fork1", mount_path="/data")
    with pytest.raises(ConflictError) as refused:  # read-write volumes are refused
        client.instances.snapshots.create("fork1", kind="Stopped")
    out["rw_refused"] = str(refused.value)
    client.instances.volumes.detach(vol.id, id="fork1")
    client.volumes.delete(vol.id)
    client.instances.start("fork1")
    client.instances.wait("fork1", state="Running", api_timeout=BOOT)
    run(client, "fork1", "echo changed > /marker && sync")
    client.instances.stop("fork1")
    back = client.instances.snapshots.restore(cold.id, id="fork1")
    out["cold_restored_state"] = back.state
    client.instances.start("fork1")
    client.instances.wait("fork1", state="Running", api_timeout=BOOT)
    out["cold_marker"] = run(client, "fork1", "cat /marker")
    client.instances.delete("fork1")
    client.snapshots.delete(cold.id)
    out["after_delete"] = [s.id for s in client.snapshots.list()]
    return out


def test_snapshot_fork_restore(server: EmberServer, ns: str) -> None:
    out = in_netns(ns, snapshots_and_forks, server)
    snap = out["snap"]
    assert snap["kind"] == "Standby" and snap["name"] == "snap1" and snap["tags"] == {"t": "1"}
    assert snap["size_bytes"] > 0 and snap["uncompressed_size_bytes"] > 0
    assert snap["compression_state"] == "none" and snap["source_hypervisor"] == "qemu"
    assert out["src_after_snapshot"] == "Running"  # paused, saved, copied, resumed
    assert out["by_filters"] == [[snap["id"]], [], [snap["id"]], [snap["id"]]]
    fork = out["fork"]
    assert fork["state"] == "Running" and fork["name"] == "fork1"
    assert out["fork_marker"] == "one" and out["fork_hostname"] == "fork1"
    assert out["fork_eth0"] == fork["network"]["mac"]
    src_ip, fork_ip, src_mac, fork_mac = out["ips"]
    assert src_ip != fork_ip and src_mac != fork_mac
    assert out["answers"] == ["hello from ember\n"] * 2
    assert out["restored"] == ("Running", "one")
    assert out["answers_after_restore"] == ["hello from ember\n"] * 2
    state, fork2_ip, src_state = out["fork2"]
    assert (state, src_state) == ("Running", "Running") and fork2_ip not in (src_ip, fork_ip)
    assert out["answers_three"] == ["hello from ember\n"] * 3
    assert out["cold"]["kind"] == "Stopped" and out["cold"]["uncompressed_size_bytes"] is None
    assert "read-write volume" in out["rw_refused"]
    assert out["cold_restored_state"] == "Stopped" and out["cold_marker"] == "one"
    assert out["after_delete"] == [snap["id"]]


def schedule(server: EmberServer) -> dict[str, Any]:
    client, out = official(server), dict[str, Any]()
    name = "src" if any(i.name == "src" for i in client.instances.list()) else None
    src = client.instances.get(name) if name else running(client, "src", image(server))
    with pytest.raises(BadRequestError):
        client.instances.snapshot_schedule.update(src.id, interval="30s",
                                                  retention={"max_count": 2})  # fmt: skip
    with pytest.raises(BadRequestError):
        client.instances.snapshot_schedule.update(src.id, interval="1m", retention={})
    put = client.instances.snapshot_schedule.update(
        src.id, interval="1m", retention={"max_count": 2}, name_prefix="every",
        metadata={"by": "schedule"},
    )  # fmt: skip
    out["put"] = put.model_dump()
    deadline = time.monotonic() + 300
    runs: set[str] = set()
    while len(runs) < 3:  # three runs: the first one is pruned by max_count 2
        assert time.monotonic() < deadline, f"only {len(runs)} scheduled runs"
        got = client.instances.snapshot_schedule.get(src.id)
        assert got.last_error is None, got.last_error
        if got.last_snapshot_id:
            runs.add(got.last_snapshot_id)
        time.sleep(1)
    out["schedule"] = client.instances.snapshot_schedule.get(src.id).model_dump()
    out["scheduled"] = [s.model_dump() for s in client.snapshots.list(tags={"by": "schedule"})]
    out["all"] = [s.name for s in client.snapshots.list()]
    out["src_state"] = client.instances.get(src.id).state
    client.instances.snapshot_schedule.delete(src.id)
    with pytest.raises(NotFoundError):
        client.instances.snapshot_schedule.get(src.id)
    return out


def test_schedule_keeps_max_count(server: EmberServer, ns: str) -> None:
    out = in_netns(ns, schedule, server)
    put = out["put"]
    assert put["interval"] == "1m" and put["retention"]["max_count"] == 2
    assert put["name_prefix"] == "every" and put["last_run_at"] is None
    scheduled = out["scheduled"]
    assert len(scheduled) == 2, [s["name"] for s in scheduled]
    assert all(s["name"].startswith("every-") and s["kind"] == "Standby" for s in scheduled)
    assert out["schedule"]["last_run_at"] is not None
    assert out["schedule"]["next_run_at"] > out["schedule"]["last_run_at"]
    assert out["src_state"] == "Running"
