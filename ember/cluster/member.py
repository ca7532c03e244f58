"""The host side: register this Ember host under a lease, keep it alive, publish its
capacity and instances, keep its names claimed, withdraw on shutdown.

One loop every quarter of the TTL: renew the lease (or register again after a lapse:
a host cut off and back re-appears by itself), publish its status (a heartbeat the
gateways read liveness from), and its inventory when it changed. Failures to
reach etcd are logged and retried; they never touch the instances.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Protocol

from ember.cluster.discovery import (
    BEATS_PER_TTL,
    Capacity,
    Discovery,
    HostStatus,
    InstanceSummary,
    Inventory,
)
from ember.cluster.etcd import Etcd, EtcdUnavailable, tls_context
from ember.config import Settings
from ember.images.models import ImageRecord, ImageStatus
from ember.instances import capacity
from ember.instances.manager import InstanceManager
from ember.instances.state import State
from ember.tasks import PeriodicTask

log = logging.getLogger("ember.cluster")
# A claim without an instance behind it is released after this long: longer than any
# create takes between the gateway's claim and the record on the host.
STALE_CLAIM_SECONDS = 600.0
RETRY_SECONDS = 0.25


class Images(Protocol):
    """What a member reads of the image manager: which images it could boot now."""

    def find(self, tags: dict[str, str] | None = None) -> list[ImageRecord]: ...


class Member:
    def __init__(
        self,
        discovery: Discovery,
        instances: InstanceManager,
        images: Images,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.discovery = discovery
        self.instances = instances
        self.images = images
        self.settings = settings
        self.name = settings.cluster_host_name or socket.gethostname()
        self.clock = clock
        self._registered = False
        self._published: Inventory | None = None
        self._beat_every = settings.cluster_lease_ttl_seconds / BEATS_PER_TTL
        self._failed = False
        self._task = PeriodicTask("cluster registration", self.tick, self._next_tick, log=log)

    def status(self) -> HostStatus:
        records = self.instances.find()
        limits, s = self.instances.core.limits, self.settings
        return HostStatus(
            name=self.name,
            address=s.cluster_advertise or f"http://{s.listen}",
            labels=s.cluster_labels,
            cpu=_capacity(capacity.cpu(records, limits, s.cpu_oversubscription)),
            memory=_capacity(capacity.memory(records, limits, s.memory_oversubscription)),
            instances=len(records),
            running=sum(r.state == State.RUNNING for r in records),
            ttl=s.cluster_lease_ttl_seconds,
            images=sorted(i.name for i in self.images.find() if i.status == ImageStatus.READY),
        )

    def inventory(self, address: str) -> Inventory:
        summaries = [
            InstanceSummary(id=r.id, name=r.name, image=r.image, state=r.state.value,
                            vcpus=r.vcpus, created_at=r.created_at.isoformat())
            for r in self.instances.find()
        ]  # fmt: skip
        return Inventory(name=self.name, address=address, instances=summaries)

    async def tick(self) -> None:
        self._failed = True
        try:
            await self._renew()
            await self._publish()
            self._failed = False
            await self._reconcile_claims()
        except EtcdUnavailable as exc:
            log.warning("cluster: etcd unavailable (%s); retrying", exc)

    def _next_tick(self) -> float:
        """A missed beat is retried soon: after an etcd leader election every host's beat
        lands at once, so none reads behind the others."""
        return RETRY_SECONDS if self._failed else self._beat_every

    async def _renew(self) -> None:
        if self._registered and await self.discovery.keepalive():
            return
        if self._registered:
            log.warning("cluster: lease of %s lapsed; registering again", self.name)
        self._registered = False
        self._published = None
        await self.discovery.register(self.status(), self.settings.cluster_lease_ttl_seconds)
        self._registered = True
        log.info("cluster: %s registered", self.name)

    async def _publish(self) -> None:
        status = self.status()
        inventory = self.inventory(status.address)
        changed = inventory if inventory != self._published else None
        await self.discovery.publish(status, changed)
        self._published = inventory

    async def _reconcile_claims(self) -> None:
        """Claim the names of this host's instances (made here directly, or before the
        host joined); release this host's claims without an instance after a while."""
        names = {r.name for r in self.instances.find()}
        claims = await self.discovery.claims()
        for name in names - claims.keys():
            if await self.discovery.claim(name, self.name) is None:
                log.warning("cluster: name %r is held by another host", name)
        for name, claim in claims.items():
            stale = self.clock() - claim.at > STALE_CLAIM_SECONDS
            if claim.host == self.name and name not in names and stale:
                await self.discovery.release(name, claim)

    def start(self) -> None:
        self._task.start()

    async def close(self) -> None:
        await self._task.close()
        try:
            await self.discovery.withdraw()
        except EtcdUnavailable as exc:
            log.warning("cluster: could not withdraw (%s); the lease lapses by itself", exc)
        await self.discovery.close()


def _capacity(status: capacity.Status) -> Capacity:
    return Capacity(
        effective_limit=status.effective_limit,
        allocated=status.allocated,
        available=status.available,
    )


def memberships(
    settings: Settings, instances: InstanceManager, images: Images
) -> tuple[Member, ...]:
    """This host's cluster membership as loops for the root: one `Member` when the
    settings ask for it (etcd endpoints and an advertised address), none for a lone host."""
    if not (settings.cluster_etcd_endpoints and settings.cluster_advertise):
        return ()
    s = settings
    tls = tls_context(s.cluster_etcd_ca, s.cluster_etcd_cert, s.cluster_etcd_key)
    return (Member(Etcd(s.cluster_etcd_endpoints, tls=tls), instances, images, settings),)
