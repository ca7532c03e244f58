"""The narrow interface between Ember and its membership store, and what it stores.

Everything the cluster needs from a consensus store fits in `Discovery`: a host
registers under a lease, keeps it alive, publishes, withdraws; anyone lists live
hosts and inventories; a name is claimed create-only and released. etcd implements it
(`ember.cluster.etcd`); Consul (sessions + KV CAS) or Nomad could, without touching
the gateway or the host member.
"""

from __future__ import annotations

import time
from typing import Protocol

from pydantic import BaseModel, Field

# A host publishes every TTL/4 (and retries sooner after a failure). It reads down once it
# has been silent for 3/4 of its TTL while another host beat half a TTL after it: a cut is
# seen within the TTL whatever etcd's own expiry adds, and while nobody can write (an etcd
# leader election) nobody reads down early; the lease alone decides then.
BEATS_PER_TTL = 4
SILENT_FRACTION = 0.75
BEHIND_FRACTION = 0.5


class Capacity(BaseModel):
    """One resource of a host as `GET /resources` reports it."""

    effective_limit: int
    allocated: int
    available: int


class HostStatus(BaseModel):
    """What a live host publishes under its lease (gone when the lease lapses)."""

    name: str
    address: str  # the URL of the host's API
    labels: dict[str, str] = Field(default_factory=dict)
    cpu: Capacity
    memory: Capacity
    instances: int = 0  # how many instances it holds (any state)
    running: int = 0
    images: list[str] = Field(default_factory=list)  # its ready images' (normalized) names
    # A heartbeat: the host's Unix time at this publish, and its lease's TTL (`heard_from`).
    beat: float = Field(default_factory=time.time)
    ttl: float = 5.0


class InstanceSummary(BaseModel):
    """What a gateway can still say about an instance whose host is down."""

    id: str
    name: str
    image: str
    state: str
    vcpus: int
    created_at: str


class Inventory(BaseModel):
    """A host's instances, kept outside the lease: they outlive the host's liveness, so a
    down host's instances read `Unknown` instead of vanishing."""

    name: str
    address: str
    instances: list[InstanceSummary] = Field(default_factory=list)


class Claim(BaseModel):
    """A cluster-wide instance name and the host that holds it."""

    host: str
    at: float  # Unix time of the claim
    revision: int = 0  # the store's version of this claim (for compare-and-delete)


def heard_from(hosts: dict[str, HostStatus], now: float) -> dict[str, HostStatus]:
    """The hosts with a lease that are not silently behind the others: down early, before
    etcd expires a lease (it checks every 500 ms, and a new etcd leader extends every
    lease by its TTL). Clocks of hosts and gateways agree (NTP)."""
    newest = max((h.beat for h in hosts.values()), default=now)

    def silent(host: HostStatus) -> bool:
        return (
            now - host.beat > host.ttl * SILENT_FRACTION
            and newest - host.beat > host.ttl * BEHIND_FRACTION
        )

    return {name: host for name, host in hosts.items() if not silent(host)}


class Discovery(Protocol):
    async def register(self, status: HostStatus, ttl: int) -> None:
        """Grant a lease and publish `status` under it (again after a lapse)."""

    async def keepalive(self) -> bool:
        """Renew the lease; False when it is gone (the host must register again)."""

    async def publish(self, status: HostStatus, inventory: Inventory | None) -> None:
        """Refresh `status` (the heartbeat), and the inventory when given (it changed)."""

    async def withdraw(self) -> None:
        """Revoke the lease: the host reads down at once."""

    async def live_hosts(self) -> dict[str, HostStatus]: ...

    async def inventories(self) -> dict[str, Inventory]: ...

    async def claim(self, name: str, host: str) -> Claim | None:
        """Claim `name` for `host` if nobody holds it; the holder's claim otherwise is
        returned as None (create-only: exactly one of racing claimers wins)."""

    async def claims(self) -> dict[str, Claim]: ...

    async def claim_of(self, name: str) -> Claim | None: ...

    async def release(self, name: str, claim: Claim) -> bool:
        """Drop the claim if it is still this one (a newer claim is left alone)."""

    async def close(self) -> None: ...
