"""Three Ember hosts in three namespaces on a bridge, one etcd member each, and gateways
in the hub namespace; everything driven through the official `hypeman` client against
a gateway (from inside the hub: no traffic leaves the namespaces this test made)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypeman import APIError, ConflictError, Hypeman
from hypeman.lib.cp import cp_from_instance, cp_to_instance
from hypeman.lib.exec import exec as hm_exec

from ember.cluster.etcd import Etcd
from ember.testkit import hello_image, write_oci_layout
from ember.testkit.cluster import GATEWAY_PORT, HUB_IP, Cluster, cluster
from ember.testkit.netns import in_netns
from ember.testkit.push import push
from tests.conftest import scratch_dir

pytestmark = pytest.mark.vm
TTL = 5  # the hosts' lease TTL (seconds): down must show within it
GATEWAY = f"{HUB_IP}:{GATEWAY_PORT}"
IMAGE = f"{GATEWAY}/hello:latest"  # pushed through the first gateway
HOST = "X-Ember-Host"
SIZE = "128MB"  # the smallest that boots: 3 hosts share 2 cores with other tests


@pytest.fixture(scope="module")
def ring() -> Iterator[Cluster]:
    with scratch_dir() as scratch, cluster(scratch, gateways=2, lease_ttl=TTL) as built:
        in_netns(built.hub, push_through_gateway, built)
        yield built


def push_through_gateway(ring: Cluster) -> None:
    """`/v2/` on the gateway: one host takes the push, the others pull the tag."""
    push(hello_image(), ring.gateways[0].url, "hello", "latest", token=ring.token())
    api = client(ring)
    until(lambda: api.images.get(IMAGE).status in ("ready", "failed"))


def client(ring: Cluster, gateway: int = 0) -> Hypeman:
    return Hypeman(base_url=ring.gateways[gateway].url, api_key=ring.token(), max_retries=0)


def gateway_get(ring: Cluster, path: str) -> Any:
    headers = {"Authorization": f"Bearer {ring.token()}"}
    return httpx.get(f"{ring.gateways[0].url}{path}", headers=headers, timeout=30).json()


def until(predicate: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.2)


def create(api: Hypeman, name: str) -> tuple[str, str]:
    """(instance id, host) of a new instance (not waited for)."""
    raw = api.instances.with_raw_response.create(
        name=name, image=IMAGE, cmd=["/hello", "serve", "8080"], vcpus=1, size=SIZE
    )
    return raw.parse().id, raw.headers[HOST]


def running(api: Hypeman, ref: str) -> None:
    until(lambda: api.instances.get(ref).state == "Running")


def exec_out(api: Hypeman, ref: str, command: str) -> str:
    result = hm_exec(api, ref, ["sh", "-c", command], wait_for_agent=60)
    assert result.exit_code == 0, result.output
    return result.output.decode().strip()


def copy_round_trip(api: Hypeman, ref: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "note").write_text(f"note for {ref}")
        cp_to_instance(api, ref, str(Path(tmp) / "note"), "/note")
        cp_from_instance(api, ref, "/note", str(Path(tmp) / "back"))
        return (Path(tmp) / "back" / "note").read_text()


def follow_first_line(api: Hypeman, ref: str) -> str:
    """The first line of a followed log stream (SSE through the gateway)."""
    stream = api.instances.logs(ref, source="hypeman", follow=True, tail=1)
    first = next(iter(stream))
    stream.close()
    return str(first)


def spread_and_use(ring: Cluster) -> dict[str, Any]:
    api = client(ring)
    out: dict[str, Any] = {"image": api.images.get(IMAGE).status}  # the least ready copy
    out["hosts"] = gateway_get(ring, "/cluster/hosts")["hosts"]
    created = dict(create(api, f"vm{i}") for i in range(6))
    for vm in created:
        running(api, vm)
    placed = {api.instances.get(vm).name: host for vm, host in created.items()}
    out["placed"] = placed
    out["exec"] = {vm: exec_out(api, vm, "echo hi-from-$(hostname)") for vm in placed}
    out["logs"] = {
        vm: len(list(api.instances.logs(vm, source="hypeman", tail=50))) for vm in placed
    }
    out["cp"] = {vm: copy_round_trip(api, vm) for vm in placed}
    out["follow"] = follow_first_line(api, next(iter(placed)))
    out["listed"] = sorted(i.name for i in api.instances.list())
    out["resources"] = gateway_get(ring, "/resources")
    # Standby, restore and fork on one instance of each host that holds any.
    firsts = {host: vm for vm, host in reversed(placed.items())}
    out["per_host"] = {host: standby_restore_fork(api, vm) for host, vm in firsts.items()}
    return out


def standby_restore_fork(api: Hypeman, vm: str) -> dict[str, str]:
    out = {"standby": str(api.instances.standby(vm).state)}
    out["restore"] = str(api.instances.restore(vm).state)
    exec_out(api, vm, "echo kept > /state")
    fork = api.instances.fork(vm, name=f"{vm}-fork", from_running=True)
    running(api, fork.id)
    out["fork"] = exec_out(api, fork.id, "cat /state")
    out["fork_host"] = api.instances.with_raw_response.get(fork.id).headers[HOST]
    api.instances.delete(fork.id)
    return out


def test_instances_spread_over_hosts_and_work_through_the_gateway(ring: Cluster) -> None:
    out = in_netns(ring.hub, spread_and_use, ring)
    names = [f"vm{i}" for i in range(6)]
    assert out["image"] == "ready"  # pushed to one host through the gateway, ready on all
    assert sorted(h["name"] for h in out["hosts"] if h["live"]) == ["h1", "h2", "h3"]
    assert len(set(out["placed"].values())) >= 2, out["placed"]
    assert out["cp"] == {vm: f"note for {vm}" for vm in names}
    assert out["follow"]
    assert out["exec"] == {vm: f"hi-from-{vm}" for vm in names}
    assert all(count > 0 for count in out["logs"].values())
    assert out["listed"] == names
    for host, used in out["per_host"].items():
        assert (used["standby"], used["restore"], used["fork"]) == ("Standby", "Running", "kept")
        assert used["fork_host"] == host  # a fork stays beside its saved VM
    assert set(out["per_host"]) == set(out["placed"].values())
    resources = out["resources"]  # the cluster's: the hosts' figures summed
    assert sorted(resources["hosts"]) == ["h1", "h2", "h3"]
    for kind in ("cpu", "memory"):
        parts = [r[kind]["allocated"] for r in resources["hosts"].values()]
        assert resources[kind]["allocated"] == sum(parts)
    assert sorted(a["instance_name"] for a in resources["allocations"]) == names


def test_cluster_status_lists_hosts_and_their_instances(ring: Cluster) -> None:
    env = {**os.environ, "EMBER_BASE_URL": ring.gateways[0].url, "EMBER_API_KEY": ring.token(),
           "COLUMNS": "200"}  # fmt: skip
    command = ["ip", "netns", "exec", ring.hub, sys.executable, "-m", "ember.cli.main"]

    def status(*args: str) -> str:
        return subprocess.run([*command, "cluster", "status", *args], env=env,
                              capture_output=True, text=True, check=True).stdout  # fmt: skip

    def held() -> list[str]:  # the hosts publish within a third of the TTL
        hosts = json.loads(status("--json"))
        return sorted(i["name"] for h in hosts for i in h["instances"])

    until(lambda: held() == [f"vm{i}" for i in range(6)], timeout=30)
    hosts = {h["name"]: h for h in json.loads(status("--json"))}
    assert sorted(hosts) == ["h1", "h2", "h3"] and all(h["live"] for h in hosts.values())
    assert all(h["memory"]["available"] > 0 for h in hosts.values())
    table = status()
    assert "h1" in table and "vm0 (Running)" in table


def test_ember_load_through_the_gateway_reaches_every_host(ring: Cluster, tmp_path: Path) -> None:
    write_oci_layout(hello_image(env={"FROM": "cli"}), tmp_path / "layout", "v1")
    env = {**os.environ, "EMBER_BASE_URL": ring.gateways[0].url, "EMBER_API_KEY": ring.token()}
    pushed = subprocess.run(
        ["ip", "netns", "exec", ring.hub, sys.executable, "-m", "ember.cli.main", "load",
         str(tmp_path / "layout"), "cli/app:v1", "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    name = f"{GATEWAY}/cli/app:v1"
    assert json.loads(pushed.stdout)["status"] == "ready"  # ready on every host (least ready)

    def published() -> bool:  # each host publishes its ready images every TTL/4
        hosts = in_netns(ring.hub, gateway_get, ring, "/cluster/hosts")["hosts"]
        return all(name in h["images"] for h in hosts)

    until(published, timeout=30)


def state_of(ring: Cluster, vm: str) -> str:
    """The state, or the error's class while the host goes down (503 host_unavailable)."""

    def get() -> str:
        try:
            return str(client(ring).instances.get(vm).state)
        except APIError as exc:
            return type(exc).__name__

    return in_netns(ring.hub, get)


def unknown_at(ring: Cluster, vm: str, timeout: float = 60) -> float:
    """`time.monotonic()` (one clock for every process) when `vm` first reads `Unknown`
    through the gateway, polled every 0.1 s from one process in the hub."""
    api = client(ring)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if api.instances.get(vm, timeout=2).state == "Unknown":
                return time.monotonic()
        except APIError:
            pass  # 503 while a request races the host's going down
        time.sleep(0.1)
    raise AssertionError(f"{vm} never read Unknown")


def test_a_cut_off_host_reads_unknown_within_the_ttl_and_comes_back(ring: Cluster) -> None:
    hosts = in_netns(ring.hub, gateway_get, ring, "/cluster/hosts")["hosts"]
    held = {i["name"]: h["name"] for h in hosts for i in h["instances"]}
    vm = "vm0"
    cut = held[vm]
    ring.link(cut, up=False)
    cut_at = time.monotonic()
    try:
        seen_at = in_netns(ring.hub, unknown_at, ring, vm)
        print(f"{vm} read Unknown {seen_at - cut_at:.2f} s after the cut (TTL {TTL} s)")
        assert seen_at - cut_at <= TTL
        hosts = in_netns(ring.hub, gateway_get, ring, "/cluster/hosts")["hosts"]
        assert [h["name"] for h in hosts if not h["live"]] == [cut]
        listed = in_netns(
            ring.hub, lambda: {i.name: i.state for i in client(ring).instances.list()}
        )
        assert listed[vm] == "Unknown"  # still listed, not vanished
        _, landed = in_netns(ring.hub, create, client(ring), "after-cut")
        assert landed != cut
        # The two members left keep quorum: a write through them succeeds.
        others = [m.client_url for name, m in ring.etcd.items() if name != cut]
        assert in_netns(ring.hub, _claims_through, others)
        in_netns(ring.hub, lambda: client(ring).instances.delete("after-cut"))
    finally:
        ring.link(cut, up=True)
    until(lambda: state_of(ring, vm) == "Running", timeout=120)
    # Its instances answer as soon as the link is back; the host itself reads live again
    # once it has re-registered (its lease lapsed during the cut): a moment later.
    until(lambda: all_live(ring), timeout=4 * TTL)


def all_live(ring: Cluster) -> bool:
    hosts = in_netns(ring.hub, gateway_get, ring, "/cluster/hosts")["hosts"]
    return all(h["live"] for h in hosts)


def _claims_through(endpoints: list[str]) -> bool:
    import asyncio

    async def probe() -> bool:
        etcd = Etcd(endpoints, prefix="/quorum-probe/")
        try:
            return await etcd.claim(f"probe-{time.time()}", "test") is not None
        finally:
            await etcd.close()

    return asyncio.run(probe())


def _create_status(ring: Cluster, gateway: int) -> int:
    try:
        client(ring, gateway).instances.create(name="contested", image=IMAGE, vcpus=1,
                                               size=SIZE)  # fmt: skip
    except ConflictError:
        return 409
    return 201


def race(ring: Cluster) -> list[int]:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(_create_status, [ring, ring], [0, 1]))
    client(ring).instances.delete("contested")
    return statuses


def test_two_gateways_racing_one_name_make_one_instance(ring: Cluster) -> None:
    assert sorted(in_netns(ring.hub, race, ring)) == [201, 409]
