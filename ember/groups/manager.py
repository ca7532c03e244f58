"""Service groups: CRUD, membership, the balancer's routes, wake and scale-to-zero.

Built on the instance manager's public commands only: sleep is `standby` (stateful)
or `stop` (stateless) with origin "platform", wake is `restore` or `start`. The
routes go to Caddy through `IngressManager.publish`; the waker answers what Caddy
cannot place; one loop (`PeriodicTask`) puts idle instances to sleep, forgets
instances that were deleted, deletes empty ephemeral groups and autokills.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Literal

from ember.errors import Conflict, EmberError, InvalidArgument, NotFound, Unavailable
from ember.groups import balancer
from ember.groups.models import MemberRecord, ScaleToZero, ServiceGroupRecord
from ember.groups.requests import (
    CreateServiceGroupRequest,
    InstanceServiceGroupRequest,
    ScaleToZeroRequest,
    check_reference,
    ephemeral_group,
    group_record,
    limits,
    scale_to_zero,
)
from ember.groups.routes import GroupView, published_routes
from ember.groups.tcp import TcpProxy
from ember.groups.waker import Waker
from ember.ids import is_id
from ember.ingress import IngressManager, PublishedRoutes
from ember.instances import CreateInstanceRequest, InstanceManager, InstanceRecord, State
from ember.instances.stopreason import StopReason
from ember.network import conntrack
from ember.store import Repository, Store
from ember.tasks import KeyedJobs, PeriodicTask

log = logging.getLogger("ember.groups")
PUBLISHER = "service-groups"
RetireHow = Literal["standby", "delete"]
PASS_SECONDS = 0.25  # how often idle instances are looked for (and changes published)
WAKE_READY_TIMEOUT = 120.0  # a stateless wake boots: until its port accepts connections
# Caddy counts a request the waker placed only once it proxies it, a moment after the
# waker's answer: for this long the waker's own count of what it placed stands in.
PLACED_SECONDS = 1.0
# A booting instance's port is tried once per pass: a refused connection answers at
# once, a guest not yet answering ARP would hold the pass, so a short wait.
PROBE_SECONDS = 0.2
# notify_time_ms: the workload is told with this signal (the agent delivers it), then
# given that long before it sleeps. The seed names no mechanism; SIGUSR1 is the usual
# "application-defined" signal (its default action ends a program that does not catch
# it, so notify_time_ms is for workloads that do).
NOTIFY_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class MemberChange:
    """A checked PATCH of an instance's group and policy (None: no group)."""

    instance: InstanceRecord
    group: ServiceGroupRecord | None
    policy: ScaleToZero | None


@dataclass(frozen=True)
class Member:
    """An instance of a group as the group's view shows it."""

    record: MemberRecord
    instance: InstanceRecord


def waker_socket(runtime_dir: Path, data_dir: Path) -> Path:
    """One socket per data dir: servers of several data dirs share the runtime dir."""
    tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return runtime_dir / f"groups-waker-{tag}.sock"


class GroupManager:
    def __init__(
        self,
        store: Store,
        instances: InstanceManager,
        ingresses: IngressManager,
        waker_socket: Path,
    ) -> None:
        self.repo = Repository(store, "service_groups", ServiceGroupRecord, "service group")
        self.members = Repository(store, "service_group_members", MemberRecord, "member")
        self.instances, self.ingresses = instances, ingresses
        self.waker = Waker(waker_socket, self.place)
        # Plain TCP services: listened on where Caddy listens for HTTP, placed as above.
        self.tcp = TcpProxy(ingresses.proxy.listen_address, self.place)
        self._wakes: KeyedJobs[InstanceRecord] = KeyedJobs()
        self._held: dict[str, int] = {}  # requests waiting for each instance's wake
        self._draining: dict[str, asyncio.Event] = {}  # going to sleep: not given requests
        self._last_active: dict[str, float] = {}  # monotonic time of the last activity seen
        self._placed: dict[str, list[float]] = {}  # when the waker placed requests, per instance
        # Groups an instance is being created into (not yet a member): not empty, not idle.
        self._filling: Counter[str] = Counter()  # per group: creates under way
        # Instances seen accepting on their ports, with the boot (`started_at`) it was in:
        # Running is not listening yet, and a restore keeps the boot (and the listener).
        self._ready: dict[str, datetime | None] = {}
        self._notified: dict[str, float] = {}  # told it will sleep (monotonic), per instance
        self._lock = asyncio.Lock()  # changes of groups and membership
        self._publish_lock = asyncio.Lock()
        self._published: list[PublishedRoutes] | None = None
        self._attempted: list[PublishedRoutes] | None = None  # last given, even if refused
        # A pass every PASS_SECONDS, and at once when an instance's change alters the
        # routes (a user's standby or stop must leave them before the next request
        # finds it there); not at the changes of a wake (its instance is not routed yet).
        self._loop = PeriodicTask(
            "service groups pass",
            self._pass,
            PASS_SECONDS,
            log=log,
            wake=lambda timeout: self.instances.changed(self._routes_stale, timeout),
        )

    # ---- server lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        await self.waker.start()
        try:
            await self._publish()
        except EmberError as exc:  # as the ingress: a Caddy that cannot start is logged
            log.error("service groups: caddy could not be configured: %s", exc.message)
        try:
            await self.tcp.sync(self._tcp_services())
        except EmberError as exc:  # a port taken meanwhile: the other services still run
            log.error("service groups: TCP services not served: %s", exc.message)
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()
        await self.tcp.close()
        await self._wakes.close()
        await self.waker.close()

    # ---- queries ---------------------------------------------------------------------

    def get(self, ref: str) -> ServiceGroupRecord:
        record = self.repo.get(ref) if is_id(ref) else None
        record = record or self.repo.by_name(ref)
        if record is None and ref:
            matches = self.repo.by_id_prefix(ref)
            record = matches[0] if len(matches) == 1 else None
        if record is None:
            raise NotFound(f"service group {ref!r} not found")
        return record

    def find(self) -> list[ServiceGroupRecord]:
        return self.repo.all()

    def members_of(self, group_id: str) -> list[Member]:
        out = []
        for member in self.members.all():
            if member.group_id != group_id:
                continue
            try:
                out.append(Member(member, self.instances.get(member.id)))
            except NotFound:
                continue  # deleted: the next pass forgets it
        return out

    def membership(self, instance_id: str) -> tuple[ServiceGroupRecord, MemberRecord] | None:
        member = self.members.get(instance_id)
        group = self.repo.get(member.group_id) if member is not None else None
        return (group, member) if group is not None and member is not None else None

    # ---- changes ---------------------------------------------------------------------

    async def create(self, request: CreateServiceGroupRequest) -> ServiceGroupRecord:
        record = group_record(request)
        async with self._lock:
            self._check_unique(record)
            self.repo.insert(record)
        await self._publish_or_undo(record)
        return record

    async def delete(self, ref: str) -> None:
        async with self._lock:
            record = self.get(ref)
            members = self.members_of(record.id)
            if members:
                names = ", ".join(m.instance.name for m in members)
                raise Conflict(
                    f"service group {record.name!r} still has instances ({names}): delete "
                    "them or move them to another group first",
                    code="group_in_use",
                )
            self.repo.delete(record.id)
        await self.tcp.sync(self._tcp_services())
        await self._publish()

    async def set_limits(self, ref: str, soft: int | None, hard: int | None) -> ServiceGroupRecord:
        """New soft/hard limits (None: keep that one), checked as at create, then published
        (Caddy's `max_requests` follows); a config Caddy refuses restores the old ones."""
        async with self._lock:
            before = self.get(ref)
            soft, hard = limits(
                before.soft_limit if soft is None else soft,
                before.hard_limit if hard is None else hard,
            )
            record = self.repo.update(before.id, lambda g: _set_limits(g, soft, hard))
        try:
            await self._publish()
        except BaseException:
            self.repo.save(before)
            raise
        return record

    async def create_instance(
        self,
        request: CreateInstanceRequest,
        group: InstanceServiceGroupRequest | None,
        scale: ScaleToZeroRequest | None,
    ) -> InstanceRecord:
        """Create an instance in a group (an existing one, or an ephemeral one made from
        `group`); everything is checked before the instance exists."""
        return await self.add_instance(
            request.name, group, scale, lambda: self.instances.create(request)
        )

    async def add_instance(
        self,
        name: str,
        group: InstanceServiceGroupRequest | None,
        scale: ScaleToZeroRequest | None,
        make: Callable[[], Awaitable[InstanceRecord]],
    ) -> InstanceRecord:
        """`make()` (a cold create, or a template's clone: `Templates.clone`) makes the
        instance `name`, which joins `group` as every member does."""
        policy = self._policy(scale, grouped=group is not None)
        if group is None:
            return await make()
        async with self._lock:
            reference = check_reference(group)
            made = None
            if reference is None:
                made = ephemeral_group(group, name)
                self._check_unique(made)
                self.repo.insert(made)
            target = made or self.get(reference or "")
            self._filling[target.id] += 1  # the pass must not delete it as empty meanwhile
        try:
            record = await make()
        except BaseException:
            if made is not None:
                self.repo.delete(made.id)
            raise
        finally:
            self._filling[target.id] -= 1
            if self._filling[target.id] <= 0:
                del self._filling[target.id]
        self._join(record, target, policy)
        await self._publish()
        return record

    def check_update(
        self,
        ref: str,
        given: set[str],
        group: InstanceServiceGroupRequest | None,
        scale: ScaleToZeroRequest | None,
    ) -> MemberChange:
        """PATCH, checked before anything changes: `service_group` (an existing group by
        name or uuid; null: leave it) and `scale_to_zero` (null: off), as `given`."""
        record = self.instances.get(ref)
        current = self.members.get(record.id)
        target = self.repo.get(current.group_id) if current is not None else None
        if "service_group" in given:
            if group is not None and check_reference(group) is None:
                raise InvalidArgument(
                    "service_group: PATCH moves an instance to an existing group (name or "
                    "uuid); new groups are made with POST /service-groups",
                    code="invalid_service_group",
                )
            target = self.get(group.reference or "") if group is not None else None
        policy = current.scale_to_zero if current is not None else None
        if "scale_to_zero" in given:
            policy = self._policy(scale, grouped=target is not None)
        return MemberChange(record, target, policy if target is not None else None)

    async def apply_update(self, change: MemberChange) -> None:
        if change.group is None:
            self.members.delete(change.instance.id)
        else:
            self._join(change.instance, change.group, change.policy)
        await self._publish()

    def _join(
        self, record: InstanceRecord, group: ServiceGroupRecord, policy: ScaleToZero | None
    ) -> None:
        member = MemberRecord(
            id=record.id, name=record.name, group_id=group.id, scale_to_zero=policy
        )
        self.members.delete(record.id)
        self.members.insert(member)
        self.repo.update(group.id, lambda g: setattr(g, "empty_since", None))
        self._last_active[record.id] = time.monotonic()

    def _policy(self, scale: ScaleToZeroRequest | None, *, grouped: bool) -> ScaleToZero | None:
        if scale is None:
            return None
        if not grouped:
            raise InvalidArgument(
                "scale_to_zero: needs a service_group (a request to the group is what wakes "
                "the instance)",
                code="scale_to_zero_requires_service_group",
            )
        return scale_to_zero(scale)

    def _check_unique(self, new: ServiceGroupRecord) -> None:
        """409: a name taken, or a port+domain another group serves already."""
        for other in self.repo.all():
            if other.name == new.name:
                raise Conflict(f"service group {new.name!r} already exists", code="already_exists")
            for service in new.services:
                same = [s for s in other.services if s.port == service.port]
                if not same:
                    continue
                # A plain TCP service has no host to tell apart: it takes the whole port.
                mine = set() if service.is_l4 else {d.name for d in new.domains}
                theirs = set() if same[0].is_l4 else {d.name for d in other.domains}
                if not mine or not theirs or mine & theirs:
                    raise Conflict(
                        f"port {service.port}: service group {other.name!r} already serves "
                        f"{'every host' if not (mine and theirs) else sorted(mine & theirs)} "
                        "there",
                        code="port_in_use",
                    )

    async def _publish_or_undo(self, record: ServiceGroupRecord) -> None:
        """Listen (TCP) and publish (HTTP) a new group; a port that cannot be had
        removes it again."""
        try:
            await self.tcp.sync(self._tcp_services())
            await self._publish()
        except BaseException:
            self.repo.delete(record.id)
            await self.tcp.sync(self._tcp_services())
            raise

    def _tcp_services(self) -> dict[int, str]:
        """The plain TCP ports of every group: port -> group id."""
        return {s.port: g.id for g in self.repo.all() for s in g.services if s.is_l4}

    # ---- the balancer ----------------------------------------------------------------

    async def place(self, group_id: str, port: int) -> str:
        """The waker's question: where does this request go (ip:port)? Wakes an
        instance first when the balancer says so; the request is held meanwhile."""
        group = self.repo.get(group_id)
        service = next((s for s in group.services if s.port == port), None) if group else None
        if group is None or service is None:
            raise NotFound(f"no service group serves this route ({group_id}:{port})")
        for event in [self._draining[m.id] for m in self.members.all() if m.id in self._draining]:
            await event.wait()  # an instance going to sleep: decide once it is asleep
        members = self.members_of(group.id)
        # Caddy's counts matter only for awake instances (an asleep group skips the ask);
        # a TCP service's are the proxy's own, counted from the moment this returns.
        awake = any(m.instance.state == State.RUNNING for m in members)
        if service.is_l4:
            in_flight = self.tcp.connections()
        else:
            in_flight = await self.ingresses.upstream_requests() if awake else {}
        candidates = [c for m in members if (c := self._candidate(m, service.destination_port,
                                                                  in_flight))]  # fmt: skip
        decision = balancer.decide(candidates, group.soft_limit, group.hard_limit)
        if decision.action == "refuse" or decision.instance_id is None:
            raise Unavailable(f"{group.name}: {decision.reason}", code="group_full")
        if decision.action == "wake":
            record = await self._hold_for_wake(decision.instance_id, service.destination_port)
        else:
            record = self.instances.get(decision.instance_id)
        self._last_active[record.id] = time.monotonic()
        if not service.is_l4:  # until Caddy counts it (the proxy counts at once)
            self._placed.setdefault(record.id, []).append(time.monotonic())
        return f"{self._ip(record)}:{service.destination_port}"

    def _candidate(
        self, member: Member, port: int, in_flight: dict[str, int]
    ) -> balancer.Candidate | None:
        instance = member.instance
        if self._wakes.running(instance.id) or self._booting(instance):
            phase: balancer.Phase = "waking"  # joining its wake waits until it listens
            load = self._held.get(instance.id, 0)
        elif instance.state == State.RUNNING and self._ip(instance):
            counted = in_flight.get(f"{self._ip(instance)}:{port}", 0)
            # Requests still held by its wake (just ended, not yet placed) are its load too.
            held = self._held.get(instance.id, 0)
            phase, load = "awake", max(counted, self._recently_placed(instance.id)) + held
        elif _wakeable(member):
            phase, load = "asleep", 0
        else:
            return None
        return balancer.Candidate(instance.id, instance.name, phase, load)

    def _recently_placed(self, instance_id: str) -> int:
        now = time.monotonic()
        recent = [t for t in self._placed.pop(instance_id, []) if now - t < PLACED_SECONDS]
        if recent:
            self._placed[instance_id] = recent
        return len(recent)

    async def _hold_for_wake(self, instance_id: str, port: int) -> InstanceRecord:
        self._held[instance_id] = self._held.get(instance_id, 0) + 1
        try:
            return await self._wakes.run(instance_id, lambda: self._wake(instance_id, port))
        finally:
            self._held[instance_id] -= 1
            if not self._held[instance_id]:
                del self._held[instance_id]

    async def _wake(self, instance_id: str, port: int) -> InstanceRecord:
        """The one wake of an instance (a burst joins it): restore a standby, or boot a
        stopped (stateless) instance and wait until it listens."""
        record = self.instances.get(instance_id)
        asleep, started = record.state, time.monotonic()
        try:
            if record.state == State.STANDBY:
                record = await self.instances.restore(instance_id)
            else:  # stopped by a scale-to-zero, or booting: until its program listens
                if record.state == State.STOPPED:
                    await self.instances.start(instance_id)
                record = await self._until_listening(instance_id, port)
        except EmberError as exc:
            raise Unavailable(
                f"waking instance {record.name!r} failed: {exc.message}", code="wake_failed"
            ) from exc
        self._last_active[instance_id] = time.monotonic()
        self._ready[instance_id] = record.started_at
        # The held requests go now (the waker's answer names a static upstream per
        # member); the next pass publishes the routes, within PASS_SECONDS.
        ms = (time.monotonic() - started) * 1000
        log.info("woke instance %s from %s in %.0f ms", record.name, asleep, ms)
        return record

    async def _until_listening(self, instance_id: str, port: int) -> InstanceRecord:
        deadline = time.monotonic() + WAKE_READY_TIMEOUT
        while time.monotonic() < deadline:
            record = self.instances.get(instance_id)
            if record.state not in (State.INITIALIZING, State.RUNNING):
                raise Unavailable(f"it is {record.state}: {record.exit_message or 'no reason'}")
            if record.state == State.RUNNING and await _accepts(self._ip(record), port, 1.0):
                return record
            await asyncio.sleep(0.05)
        raise Unavailable(f"it did not listen on port {port} within {WAKE_READY_TIMEOUT:.0f}s")

    def _ip(self, record: InstanceRecord) -> str | None:
        lease = self.instances.lease(record)
        return lease.ip if lease is not None else None

    async def _publish(self) -> None:
        """Hand Caddy the routes of every group, only when they changed: a Caddy load
        can drop a connection that arrives at that instant (README.md, measured)."""
        async with self._publish_lock:
            routes = self._routes()
            if routes == self._published:
                return
            self._attempted = routes
            await self.ingresses.publish(PUBLISHER, routes)
            self._published = routes

    def _routes(self) -> list[PublishedRoutes]:
        views = [self._view(group) for group in self.repo.all()]
        return published_routes(views, self.waker.socket_path)

    def _routes_stale(self) -> bool:
        """Routes other than the last tried (not the last published: a Caddy that
        refuses them must not make the pass spin)."""
        return self._attempted is not None and self._routes() != self._attempted

    def _view(self, group: ServiceGroupRecord) -> GroupView:
        members = self.members_of(group.id)
        awake = tuple(ip for m in members if self._routable(m) and (ip := self._ip(m.instance)))
        addresses = tuple(ip for m in members if (ip := self._ip(m.instance)) is not None)
        return GroupView(group, awake, any(_wakeable(m) for m in members), addresses)

    def _routable(self, member: Member) -> bool:
        """Caddy may balance to it by itself: running, listening, not going to sleep, and
        no request of the waker's pending for it (while a wake holds requests, Caddy does
        not know of them, and would give the instance more than the soft limit)."""
        instance_id = member.record.id
        return (
            member.instance.state == State.RUNNING
            and not self._booting(member.instance)
            and instance_id not in self._draining
            and instance_id not in self._held
            and not self._wakes.running(instance_id)
        )

    def _booting(self, instance: InstanceRecord) -> bool:
        """Running (or starting) but not yet seen listening in this boot."""
        running = instance.state in (State.INITIALIZING, State.RUNNING)
        seen = instance.id in self._ready and self._ready[instance.id] == instance.started_at
        return running and not seen

    async def _probe_booting(self) -> None:
        """One connection attempt per port of each running instance not yet seen
        listening; those that accept every port become routable."""
        booting = [m for g in self.repo.all() for m in self.members_of(g.id)
                   if m.instance.state == State.RUNNING and self._booting(m.instance)]  # fmt: skip

        async def probe(member: Member) -> None:
            ip = self._ip(member.instance)
            ports = self._ports(member)
            if all(await asyncio.gather(*(_accepts(ip, port, PROBE_SECONDS) for port in ports))):
                self._ready[member.record.id] = member.instance.started_at

        await asyncio.gather(*(probe(m) for m in booting))

    # ---- the loop: scale to zero, forget, autokill -------------------------------------

    async def _pass(self) -> None:
        self._forget_deleted()
        await self._probe_booting()
        await self._publish()
        sleepy = [
            m for g in self.repo.all() for m in self.members_of(g.id)
            if m.record.scale_to_zero is not None and m.record.scale_to_zero.enabled
            and m.instance.state == State.RUNNING
        ]  # fmt: skip
        if not sleepy:
            return
        in_flight = await self._in_flight()
        flows = await _established() if any(_counts_flows(m) for m in sleepy) else []
        now = time.monotonic()
        for member in sleepy:
            if self._active(member, in_flight, flows):
                self._last_active[member.record.id] = now
                self._notified.pop(member.record.id, None)  # told again next time
            last = self._last_active.setdefault(member.record.id, now)
            policy = member.record.scale_to_zero
            if policy is None or (now - last) * 1000 < policy.cooldown_time_ms:
                continue
            if await self._notice_over(member, policy, now):
                await self._sleep(member, policy)

    async def _notice_over(self, member: Member, policy: ScaleToZero, now: float) -> bool:
        """notify_time_ms: the first idle pass tells the workload (NOTIFY_SIGNAL), and the
        instance sleeps once that long has passed with no request (it keeps serving
        meanwhile; a request starts the cooldown and the notice again)."""
        if not policy.notify_time_ms:
            return True
        told = self._notified.get(member.record.id)
        if told is not None:
            return (now - told) * 1000 >= policy.notify_time_ms
        self._notified[member.record.id] = now
        try:
            _, agent = self.instances.agent(member.record.id)
            await agent.signal(NOTIFY_SIGNAL)
        except EmberError as exc:  # it sleeps all the same, after the notice time
            log.warning("could not notify %s before it sleeps: %s", member.instance.name,
                        exc.message)  # fmt: skip
        return False

    async def _in_flight(self) -> dict[str, int]:
        """Requests (Caddy) and TCP connections (the proxy) in flight per upstream: an
        instance with either is active and never put to sleep."""
        counts = Counter(await self.ingresses.upstream_requests())
        counts.update(self.tcp.connections())
        return dict(counts)

    def _active(self, member: Member, in_flight: dict[str, int], flows: list[str]) -> bool:
        instance_id, ip = member.record.id, self._ip(member.instance)
        if ip is None or self._wakes.running(instance_id) or instance_id in self._held:
            return True
        if self._booting(member.instance):  # idle time counts once it listens
            return True
        if any(in_flight.get(key, 0) for key in _addresses(ip, self._ports(member))):
            return True
        return _counts_flows(member) and ip in flows

    def _ports(self, member: Member) -> list[int]:
        group = self.repo.get(member.record.group_id)
        return [s.destination_port for s in group.services] if group is not None else []

    async def _sleep(self, member: Member, policy: ScaleToZero) -> None:
        """Scale one instance to zero: standby (stateful) or stop (stateless)."""
        instance_id = member.record.id
        act: Callable[[], Awaitable[object]]
        if policy.stateful:
            act = partial(self.instances.standby, instance_id, origin="platform")
        else:
            act = partial(self.instances.stop, instance_id, origin="platform")
        try:
            if not await self._out_of_service(member, act, "scaling instance %s to zero"):
                self._last_active[instance_id] = time.monotonic()
        except EmberError as exc:
            log.warning("scale to zero of %s failed: %s", member.instance.name, exc.message)
            self._last_active[instance_id] = time.monotonic()

    async def retire(self, instance_id: str, how: RetireHow) -> bool:
        """Take a member out of service for good (autoscale's scale-in): out of the
        routes, then, with nothing in flight, `standby` (by the platform) or `delete`.
        False: a request was in flight, the member stays and serves."""
        record = self.members.get(instance_id)
        group_members = self.members_of(record.group_id) if record is not None else []
        member = next((m for m in group_members if m.record.id == instance_id), None)
        if member is None:
            raise NotFound(f"instance {instance_id!r} is in no service group")
        act: Callable[[], Awaitable[object]]
        if how == "standby":
            act = partial(self.instances.standby, instance_id, origin="platform")
        else:
            act = partial(self.instances.delete, instance_id, graceful=True)
        return await self._out_of_service(member, act, f"retiring instance %s ({how})")

    async def _out_of_service(
        self, member: Member, act: Callable[[], Awaitable[object]], what: str
    ) -> bool:
        """Out of the routes first, then in-flight is checked again (a request that came
        in between cancels: False), then `act`."""
        instance_id = member.record.id
        event = self._draining[instance_id] = asyncio.Event()
        try:
            await self._publish()
            if (await self.requests_in_flight([member])).get(instance_id):
                return False
            log.info(what, member.instance.name)
            await act()
            return True
        finally:
            del self._draining[instance_id]
            self._notified.pop(instance_id, None)
            event.set()
            await self._publish()

    async def requests_in_flight(self, members: list[Member]) -> dict[str, int]:
        """In-flight requests and TCP connections per member (instance id), over its
        services' ports."""
        counts = await self._in_flight()
        out = {}
        for member in members:
            ip = self._ip(member.instance)
            keys = _addresses(ip, self._ports(member)) if ip else []
            out[member.record.id] = sum(counts.get(key, 0) for key in keys)
        return out

    def _forget_deleted(self) -> None:
        """Instances deleted leave their group; empty ephemeral groups go, and so do
        groups empty for longer than their autokill."""
        for member in self.members.all():
            try:
                self.instances.get(member.id)
            except NotFound:
                self.members.delete(member.id)
                self._last_active.pop(member.id, None)
                self._placed.pop(member.id, None)
                self._ready.pop(member.id, None)
                self._notified.pop(member.id, None)
        now = datetime.now(UTC)
        counts: dict[str, int] = {}
        for member in self.members.all():
            counts[member.group_id] = counts.get(member.group_id, 0) + 1
        for group in self.repo.all():
            if counts.get(group.id) or self._filling[group.id] > 0:
                continue
            if not group.persistent:
                self.repo.delete(group.id)
            elif group.empty_since is None:
                self.repo.update(group.id, lambda g: setattr(g, "empty_since", now))
            elif group.autokill and group.autokill.time_ms and _expired(group, now):
                log.info("autokill: deleting empty service group %s", group.name)
                self.repo.delete(group.id)


def _set_limits(group: ServiceGroupRecord, soft: int, hard: int) -> None:
    group.soft_limit, group.hard_limit = soft, hard


def _expired(group: ServiceGroupRecord, now: datetime) -> bool:
    empty_ms = (now - (group.empty_since or now)).total_seconds() * 1000
    return group.autokill is not None and empty_ms >= group.autokill.time_ms


def _wakeable(member: Member) -> bool:
    """Asleep and ours to wake: any standby, or stopped by a scale-to-zero (a user's
    stop stays stopped)."""
    instance = member.instance
    if instance.state == State.STANDBY:
        return True
    reason = instance.stop_reason or 0
    return (
        instance.state == State.STOPPED
        and bool(reason & StopReason.PLATFORM)
        and not reason & (StopReason.USER | StopReason.FORCED)
        and member.record.scale_to_zero is not None
        and member.record.scale_to_zero.enabled
    )


def _counts_flows(member: Member) -> bool:
    """Policy `on`: open connections keep an instance awake too; `idle`: only requests."""
    policy = member.record.scale_to_zero
    return policy is not None and policy.policy == "on"


def _addresses(ip: str, ports: Iterable[int]) -> list[str]:
    return [f"{ip}:{port}" for port in ports]


async def _established() -> list[str]:
    """Destination IPs of the ESTABLISHED TCP flows (empty when conntrack is missing)."""
    try:
        return [flow.dst for flow in await conntrack.established()]
    except conntrack.ConntrackError as exc:
        log.warning("service groups: %s", exc)
        return []


async def _accepts(ip: str | None, port: int, timeout: float) -> bool:
    if ip is None:
        return False
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


__all__ = ["GroupManager", "Member", "MemberChange", "RetireHow", "waker_socket"]
