"""`ember.cluster.etcd` against a real etcd member on loopback: leases, inventories and
create-only name claims; and a member that requires TLS client certificates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ember.cluster.discovery import Capacity, HostStatus, InstanceSummary, Inventory
from ember.cluster.etcd import Etcd, EtcdUnavailable, tls_context
from ember.testkit.etcd import EtcdMember, certificates, client_tls, start_cluster
from tests.conftest import scratch_dir


@pytest.fixture
async def etcd(etcd_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Etcd]:
    client = Etcd([etcd_url], prefix=f"/test-{request.node.name}/")
    yield client
    await client.close()


def status(name: str) -> HostStatus:
    capacity = Capacity(effective_limit=4, allocated=0, available=4)
    return HostStatus(name=name, address=f"http://{name}", cpu=capacity, memory=capacity)


async def test_a_lapsed_lease_takes_the_host_but_not_its_inventory(etcd: Etcd) -> None:
    await etcd.register(status("h1"), ttl=2)
    vm = InstanceSummary(id="i1", name="web", image="img", state="Running", vcpus=1,
                         created_at="2026-01-01T00:00:00")  # fmt: skip
    await etcd.publish(status("h1"), Inventory(name="h1", address="http://h1", instances=[vm]))
    assert list(await etcd.live_hosts()) == ["h1"]
    assert await etcd.keepalive()
    for _ in range(100):  # no more keepalives: etcd expires the lease by itself
        if not await etcd.live_hosts():
            break
        await asyncio.sleep(0.1)
    assert await etcd.live_hosts() == {}
    assert (await etcd.inventories())["h1"].instances == [vm]
    assert not await etcd.keepalive()  # the host learns it must register again


async def test_withdraw_is_immediate(etcd: Etcd) -> None:
    await etcd.register(status("h2"), ttl=30)
    await etcd.withdraw()
    assert await etcd.live_hosts() == {}


async def test_of_racing_claims_exactly_one_wins(etcd: Etcd, etcd_url: str) -> None:
    others = [Etcd([etcd_url], prefix=etcd.prefix) for _ in range(5)]
    try:
        won = await asyncio.gather(*(c.claim("web", f"h{i}") for i, c in enumerate(others)))
    finally:
        for client in others:
            await client.close()
    winners = [c for c in won if c is not None]
    assert len(winners) == 1
    assert await etcd.claim_of("web") == winners[0]


async def test_release_leaves_a_newer_claim_alone(etcd: Etcd) -> None:
    first = await etcd.claim("db", "h1")
    assert first is not None
    assert await etcd.release("db", first)
    second = await etcd.claim("db", "h2")
    assert second is not None
    assert not await etcd.release("db", first)  # the stale holder cannot drop it
    assert (await etcd.claims())["db"].host == "h2"


async def test_an_etcd_that_requires_client_certificates_takes_only_ours() -> None:
    with scratch_dir() as scratch:
        tls = certificates(scratch / "tls")
        member = EtcdMember("tls", scratch / "etcd", tls=tls)
        start_cluster([member])
        clients = {
            "certified": Etcd([member.client_url], tls=client_tls(tls)),
            "no certificate": Etcd([member.client_url], tls=tls_context(tls / "ca.pem")),
            "plain HTTP": Etcd([member.client_url.replace("https:", "http:")]),
        }
        try:
            assert await clients["certified"].claim("web", "h1") is not None
            claim = await clients["certified"].claim_of("web")
            assert claim is not None and claim.host == "h1"
            for refused in ("no certificate", "plain HTTP"):
                with pytest.raises(EtcdUnavailable):
                    await clients[refused].claim_of("web")
        finally:
            for client in clients.values():
                await client.close()
            member.stop()
