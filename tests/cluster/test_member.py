"""The host side (`ember.cluster.member.Member`) against a real etcd: registration,
publishing, registering again after a lapse, withdrawal, and the host's own claims.
The instance manager is a stand-in holding records (only `find()` and the limits)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ember.cluster.etcd import Etcd
from ember.cluster.member import STALE_CLAIM_SECONDS, Member
from ember.config import Settings
from ember.images.models import ImageRecord, ImageStatus
from ember.instances.manager import InstanceManager
from ember.instances.models import InstanceRecord
from ember.instances.plan import HostLimits
from ember.instances.state import State

GIB = 2**30


@dataclass
class Instances:
    records: list[InstanceRecord] = field(default_factory=list)
    core: Any = field(default_factory=lambda: SimpleNamespace(limits=HostLimits(4, 4, 8 * GIB)))

    def find(self) -> list[InstanceRecord]:
        return list(self.records)


def record(name: str, state: State = State.RUNNING) -> InstanceRecord:
    return InstanceRecord(id=f"id-{name}", name=name, image="img", image_digest="sha256:0",
                          state=state, vcpus=2, memory_bytes=GIB, overlay_bytes=GIB)  # fmt: skip


@pytest.fixture
async def etcd(etcd_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Etcd]:
    client = Etcd([etcd_url], prefix=f"/member-{request.node.name}/")
    yield client
    await client.close()


def member(etcd: Etcd, instances: Instances, now: list[float]) -> Member:
    settings = Settings(cluster_etcd_endpoints=etcd.endpoints, cluster_host_name="h1",
                        cluster_advertise="http://10.0.0.1:4973", cluster_lease_ttl_seconds=2,
                        cluster_labels={"zone": "a"})  # fmt: skip
    own = Etcd(etcd.endpoints, prefix=etcd.prefix)
    images = SimpleNamespace(find=lambda tags=None: [
        ImageRecord(id="i1", name="docker.io/library/ready:1", status=ImageStatus.READY),
        ImageRecord(id="i2", name="docker.io/library/pulling:1", status=ImageStatus.PULLING),
    ])  # fmt: skip
    return Member(own, cast(InstanceManager, instances), images, settings, clock=lambda: now[0])


async def test_publishes_capacity_and_instances_and_withdraws(etcd: Etcd) -> None:
    instances = Instances([record("web"), record("idle", State.STOPPED)])
    host = member(etcd, instances, [0.0])
    await host.tick()
    status = (await etcd.live_hosts())["h1"]
    assert (status.address, status.labels) == ("http://10.0.0.1:4973", {"zone": "a"})
    assert (status.cpu.allocated, status.memory.allocated) == (2, GIB)  # running ones only
    assert (status.instances, status.running) == (2, 1)
    assert status.images == ["docker.io/library/ready:1"]  # ready ones only
    assert status.ttl == 2 and time.time() - status.beat < 2  # its heartbeat
    listed = (await etcd.inventories())["h1"].instances
    assert {(i.name, i.state) for i in listed} == {("web", "Running"), ("idle", "Stopped")}
    assert {n: c.host for n, c in (await etcd.claims()).items()} == {"web": "h1", "idle": "h1"}
    await host.close()
    assert await etcd.live_hosts() == {}
    assert "h1" in await etcd.inventories()  # its instances stay known


async def test_every_tick_beats_the_inventory_goes_when_it_changed(etcd: Etcd) -> None:
    instances = Instances([record("web")])
    host = member(etcd, instances, [0.0])
    await host.tick()
    first = (await etcd.live_hosts())["h1"].beat
    inventory = await etcd._get("inventory/h1")
    await host.tick()  # nothing changed: a new beat, the same inventory
    assert (await etcd.live_hosts())["h1"].beat > first
    again = await etcd._get("inventory/h1")
    assert inventory and again and again["mod_revision"] == inventory["mod_revision"]
    instances.records.append(record("db"))
    await host.tick()
    assert {i.name for i in (await etcd.inventories())["h1"].instances} == {"web", "db"}
    await host.close()


async def test_registers_again_after_its_lease_lapsed(etcd: Etcd) -> None:
    host = member(etcd, Instances([record("web")]), [0.0])
    await host.tick()
    await host.discovery.withdraw()  # as a lapse while cut off would
    assert await etcd.live_hosts() == {}
    await host.tick()  # the renewal finds no lease: register and publish again
    assert list(await etcd.live_hosts()) == ["h1"]
    await host.close()


async def test_releases_its_stale_claims_only(etcd: Etcd) -> None:
    now = [time.time()]  # claims carry the wall clock
    instances = Instances([record("web")])
    host = member(etcd, instances, now)
    await host.tick()
    assert await etcd.claim("other", "h2") is not None  # another host's, never touched
    instances.records.clear()  # deleted on the host, not through a gateway
    await host.tick()
    assert "web" in await etcd.claims()  # a create may still be on its way
    now[0] += STALE_CLAIM_SECONDS + 1
    await host.tick()
    assert sorted(await etcd.claims()) == ["other"]
    await host.close()
