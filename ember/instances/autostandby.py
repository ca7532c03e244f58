"""Auto-standby: puts a Running instance in standby once no qualifying inbound TCP flow
reached it for its policy's `idle_timeout`.

What counts: ESTABLISHED TCP flows in the host's connection tracking table whose
original destination is the instance's IP (someone connected *to* it: a client
through ingress, a peer on the host), minus sources in `ignore_source_cidrs` and
destination ports in `ignore_destination_ports`. Flows the guest opened itself have
the guest as source and never count.

How it watches (`ember.network.conntrack`):
- **Events** (`conntrack -E`): any event of a qualifying flow is activity at that
  moment, so a short request that came and went between two passes still restarts
  the countdown; it also wakes the loop at once.
- **Reconcile**: each pass dumps the table once for every instance and counts; it
  runs at least every `auto_standby_reconcile_seconds`, at each countdown's end, and
  on every change of a record that matters (state, policy, hold).
- **One last check before acting**: a fresh dump and a re-read record (still
  Running, policy on, no hold, no activity since) right before the standby.

What is kept: the countdown (`idle_since`), the last activity and the hold live in
the record (`auto_standby_state`), so a restarted server goes on where it stopped;
the count of flows is in memory (it is re-read at every pass anyway). The status is
computed by `evaluate` (pure), with the reasons and statuses of Hypeman's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from ember.errors import EmberError, InvalidState
from ember.instances.core import InstanceCore
from ember.instances.models import AutoStandbyPolicy, AutoStandbyState, InstanceRecord
from ember.instances.state import State
from ember.network import conntrack
from ember.network.conntrack import ConntrackError, Flow
from ember.tasks import PeriodicTask
from ember.units import parse_duration

log = logging.getLogger("ember.instances")

Status = Literal[
    "unsupported", "disabled", "ineligible", "active", "idle_countdown",
    "ready_for_standby", "standby_requested", "error",
]  # fmt: skip
Reason = Literal[
    "unsupported_platform", "policy_missing", "policy_disabled", "instance_not_running",
    "network_disabled", "missing_ip", "has_vgpu", "active_inbound_connections",
    "idle_timeout_not_elapsed", "observer_error", "ready_for_standby",
]  # fmt: skip
Address = Callable[[InstanceRecord], str | None]
Standby = Callable[[str], Awaitable[object]]
# Events wake the loop, but a busy guest must not turn it into a dump per packet.
EVENT_MIN_SPACING = 0.5  # seconds between two passes woken by events


@dataclass(frozen=True)
class Report:
    """Hypeman's `AutoStandbyStatus`."""

    status: Status
    reason: Reason
    supported: bool
    configured: bool
    enabled: bool
    eligible: bool
    active_inbound_connections: int
    tracking_mode: str
    idle_timeout: str | None = None
    idle_since: datetime | None = None
    last_inbound_activity_at: datetime | None = None
    hold_until: datetime | None = None
    next_standby_at: datetime | None = None
    countdown_remaining: str | None = None


@dataclass(frozen=True)
class Observation:
    """What the controller knows of one instance beyond its record."""

    ip: str | None  # None: no network lease
    supported: bool = True
    connections: int | None = None  # None: not counted (yet)
    error: str | None = None  # the table could not be read
    standby_requested: bool = False
    tracking_mode: str = "conntrack_events"
    seen_active_at: datetime | None = None


def qualifies(flow: Flow, ip: str, policy: AutoStandbyPolicy) -> bool:
    """A flow *to* `ip` that the policy does not ignore."""
    if flow.dst != ip or flow.dport in policy.ignore_destination_ports:
        return False
    try:
        source = ipaddress.ip_address(flow.src)
    except ValueError:
        return True
    return not any(source in ipaddress.ip_network(c) for c in policy.ignore_source_cidrs)


def count(flows: Iterable[Flow], ip: str, policy: AutoStandbyPolicy) -> int:
    return sum(1 for flow in flows if qualifies(flow, ip, policy))


def idle_timeout(policy: AutoStandbyPolicy) -> float:
    return parse_duration(policy.idle_timeout or "0s", field="auto_standby.idle_timeout")


def go_duration(seconds: float) -> str:
    """Whole seconds, rounded up, as a Go duration ("1h2m3s")."""
    total = max(0, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return text + f"{secs}s"


def held(state: AutoStandbyState, now: datetime) -> bool:
    return state.hold_until is not None and state.hold_until > now


def evaluate(record: InstanceRecord, seen: Observation, now: datetime) -> Report:
    """The status of `record` (pure), first reason that applies wins."""
    policy, state = record.auto_standby, record.auto_standby_state
    base: dict[str, object] = {
        "supported": seen.supported,
        "configured": policy is not None,
        "enabled": policy is not None and policy.enabled,
        "eligible": False,
        "active_inbound_connections": seen.connections or 0,
        "tracking_mode": seen.tracking_mode,
        "idle_timeout": policy.idle_timeout if policy else None,
        "hold_until": state.hold_until if held(state, now) else None,
        "last_inbound_activity_at": _latest(state.last_inbound_activity_at, seen.seen_active_at),
    }

    def report(status: Status, reason: Reason, **extra: object) -> Report:
        return Report(status=status, reason=reason, **{**base, **extra})  # type: ignore[arg-type]

    if not seen.supported:
        return report("unsupported", "unsupported_platform")
    if policy is None:
        return report("disabled", "policy_missing")
    if not policy.enabled:
        return report("disabled", "policy_disabled")
    if seen.standby_requested:
        return report("standby_requested", "ready_for_standby")
    if record.state != State.RUNNING:
        return report("ineligible", "instance_not_running")
    if seen.ip is None:
        return report("ineligible", "network_disabled")
    if seen.error is not None:
        return report("error", "observer_error")
    if seen.connections:
        return report("active", "active_inbound_connections")
    idle_since = state.idle_since or now
    due = idle_since + timedelta(seconds=idle_timeout(policy))
    if held(state, now) and state.hold_until is not None:
        due = max(due, state.hold_until)
    if due > now:
        return report(
            "idle_countdown", "idle_timeout_not_elapsed", eligible=True, idle_since=idle_since,
            next_standby_at=due, countdown_remaining=go_duration((due - now).total_seconds()),
        )  # fmt: skip
    return report(
        "ready_for_standby", "ready_for_standby", eligible=True, idle_since=idle_since,
        next_standby_at=due, countdown_remaining="0s",
    )  # fmt: skip


def _latest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def watched(record: InstanceRecord) -> bool:
    """The controller counts flows for this instance."""
    policy = record.auto_standby
    return policy is not None and policy.enabled and record.state == State.RUNNING


@dataclass
class _Seen:
    connections: int | None = None
    active_at: datetime | None = None  # last pass that found flows (in memory)
    event_at: datetime | None = None  # last qualifying event, not yet applied
    event: Flow | None = None


@dataclass
class _Table:
    """The last dump: one for every instance."""

    flows: list[Flow] = field(default_factory=list)
    error: str | None = None


class AutoStandby:
    def __init__(self, core: InstanceCore, address: Address, standby: Standby) -> None:
        """`address`: the instance's IP (None: no network); `standby`: the manager's
        standby of an instance id (takes the instance lock)."""
        self.core, self._address, self._standby = core, address, standby
        self.supported = conntrack.binary() is not None
        self._seen: dict[str, _Seen] = {}
        self._table = _Table()
        self._by_ip: dict[str, InstanceRecord] = {}  # watched instances, for events
        self._committing: set[str] = set()
        self._events = conntrack.ConntrackEvents(self._on_flow)
        self._following = False  # the events are followed (while an instance is watched)
        self._wake = asyncio.Event()
        self._last_event_pass = 0.0
        self._loop = PeriodicTask(
            "auto-standby pass", self.reconcile, self._next_wait, log=log, wake=self._sleep
        )

    def start(self) -> None:
        self._loop.start()  # its passes start and stop the events (`_follow_events`)

    async def close(self) -> None:
        await self._loop.close()
        await self._events.close()

    # ---- what the API asks ---------------------------------------------------------

    async def status(self, record: InstanceRecord) -> Report:
        """The status now: a watched instance is counted afresh, not from the last pass."""
        if watched(record) and self.supported and self._address(record) is not None:
            await self._dump()
            # Moved as a pass would: what the status says is what the record keeps.
            record = self._advance(self._count(record), datetime.now(UTC))
        return evaluate(record, self._observation(record), datetime.now(UTC))

    async def hold(self, record: InstanceRecord) -> Report:
        """Hold off standby for one `idle_timeout` from now (each hold replaces the last).
        409 when the instance is in Standby or this controller is putting it there."""
        if record.state == State.STANDBY or record.id in self._committing:
            raise InvalidState(
                f"instance {record.name!r} is in standby (or entering it): restore it first",
                code="in_standby",
            )
        policy = record.auto_standby
        if policy is not None and policy.enabled:
            until = datetime.now(UTC) + timedelta(seconds=idle_timeout(policy))

            def change(r: InstanceRecord) -> None:
                r.auto_standby_state.hold_until = until

            record = self.core.update(record.id, change)
            self.core.event(record.id, f"auto-standby: held until {until.isoformat()}")
        return await self.status(record)

    # ---- the loop ------------------------------------------------------------------

    async def reconcile(self) -> None:
        """One pass: count every watched instance, move the countdowns, act on the due."""
        now = datetime.now(UTC)
        records = self.core.repo.all()
        self._by_ip = {ip: r for r in records if watched(r) and (ip := self._address(r))}
        await self._follow_events(bool(self._by_ip))
        self._forget(records)
        if self._by_ip and self.supported:
            await self._dump()
        for record in records:
            if record.auto_standby is None and record.auto_standby_state.idle_since is None:
                continue
            record = self._count(record)
            record = self._advance(record, now)
            seen = self._observation(record)
            if evaluate(record, seen, now).status == "ready_for_standby":
                await self._act(record)

    async def _follow_events(self, wanted: bool) -> None:
        """Events only while an instance is watched: the follower reads every NEW and
        UPDATE of every TCP flow of the namespace (~6 per request through the host),
        a tenth of a core at 600 requests/s with nothing watched (measured with
        bench/wake.py). A newly watched instance is counted by the pass's dump."""
        if not self.supported or wanted == self._following:
            return
        self._following = wanted
        if wanted:
            self._events.start()
        else:
            await self._events.close()

    def _forget(self, records: list[InstanceRecord]) -> None:
        live = {r.id for r in records if watched(r)}
        for instance_id in set(self._seen) - live:
            del self._seen[instance_id]

    async def _dump(self) -> None:
        try:
            self._table = _Table(await conntrack.established())
        except ConntrackError as exc:
            if self._table.error is None:
                log.warning("auto-standby: %s", exc)
            self._table = _Table(error=str(exc))

    def _count(self, record: InstanceRecord) -> InstanceRecord:
        ip, policy = self._address(record), record.auto_standby
        if not watched(record) or ip is None or policy is None or self._table.error:
            return record
        seen = self._seen.setdefault(record.id, _Seen())
        seen.connections = count(self._table.flows, ip, policy)
        if seen.connections:
            seen.active_at = datetime.now(UTC)
        return record

    def _advance(self, record: InstanceRecord, now: datetime) -> InstanceRecord:
        """Move the persisted countdown: start it when flows end (or at Running), restart
        it on activity seen in events, clear it when the instance is not watched."""
        state, seen = record.auto_standby_state, self._seen.get(record.id)
        idle_since, last = state.idle_since, state.last_inbound_activity_at
        if not watched(record) or self._address(record) is None:
            idle_since = None
        elif seen is not None and seen.connections:
            idle_since, last = None, now if idle_since is not None or last is None else last
        elif seen is not None and seen.connections == 0:
            event_at, seen.event_at = seen.event_at, None
            if idle_since is None:  # flows ended, or the countdown starts (Running)
                idle_since = now
                if seen.active_at is not None or event_at is not None:
                    last = now
            elif event_at is not None and event_at > idle_since:
                idle_since = last = event_at  # a flow came and went between two passes
                self.core.event(record.id, f"auto-standby: countdown restarts ({_flow(seen)})")
        if (idle_since, last) == (state.idle_since, state.last_inbound_activity_at):
            return record

        def change(r: InstanceRecord) -> None:
            r.auto_standby_state.idle_since = idle_since
            r.auto_standby_state.last_inbound_activity_at = last

        return self.core.update(record.id, change)

    async def _act(self, record: InstanceRecord) -> None:
        """The last check, then the standby."""
        await self._dump()
        current = self.core.repo.get(record.id)
        if current is None:
            return
        current = self._count(current)
        seen, now = self._observation(current), datetime.now(UTC)
        pending = self._seen.get(current.id)
        if evaluate(current, seen, now).status != "ready_for_standby" or (
            pending is not None and pending.event_at is not None
        ):
            return  # activity or a hold since the pass decided: the next pass sees it
        policy = current.auto_standby
        assert policy is not None
        self._committing.add(current.id)
        try:
            self.core.event(
                current.id,
                f"auto-standby: no inbound TCP flow for {policy.idle_timeout}: standby",
            )
            await self._standby(current.id)
        except EmberError as exc:
            self.core.event(current.id, f"auto-standby: standby failed: {exc}")

            def restart(r: InstanceRecord) -> None:  # count down again rather than retry
                r.auto_standby_state.idle_since = datetime.now(UTC)

            with contextlib.suppress(EmberError):
                self.core.update(current.id, restart)
        finally:
            self._committing.discard(current.id)

    def _observation(self, record: InstanceRecord) -> Observation:
        seen = self._seen.get(record.id, _Seen())
        mode = "conntrack_poll" if self._events.error else "conntrack_events"
        return Observation(
            ip=self._address(record),
            supported=self.supported,
            connections=seen.connections,
            error=self._table.error if watched(record) else None,
            standby_requested=record.id in self._committing,
            tracking_mode=mode,
            seen_active_at=seen.active_at,
        )

    # ---- waking up -----------------------------------------------------------------

    def _on_flow(self, flow: Flow) -> None:
        record = self._by_ip.get(flow.dst)
        if record is None or record.auto_standby is None:
            return
        if not qualifies(flow, flow.dst, record.auto_standby):
            return
        seen = self._seen.setdefault(record.id, _Seen())
        seen.event_at, seen.event = datetime.now(UTC), flow
        self._wake.set()

    def _next_wait(self) -> float:
        """Until the next tick, or the earliest countdown's end."""
        wait = self.core.settings.auto_standby_reconcile_seconds
        now = datetime.now(UTC)
        for record in self.core.repo.all():
            report = evaluate(record, self._observation(record), now)
            if report.next_standby_at is not None:
                wait = min(wait, max(0.0, (report.next_standby_at - now).total_seconds()))
        return wait

    def _signature(self) -> list[tuple[object, ...]]:
        """What, in the records, changes what this controller does."""
        return [
            (r.id, r.state, r.auto_standby, r.auto_standby_state.hold_until)
            for r in self.core.repo.all()
            if r.auto_standby is not None or r.id in self._seen
        ]

    async def _sleep(self, timeout: float) -> None:
        before = self._signature()
        changed = asyncio.ensure_future(
            self.core.changes.wait_for(lambda: self._signature() != before, timeout)
        )
        woken = asyncio.ensure_future(self._woken_by_event())
        try:
            await asyncio.wait(
                [changed, woken], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (changed, woken):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.gather(changed, woken, return_exceptions=True)

    async def _woken_by_event(self) -> None:
        await self._wake.wait()
        self._wake.clear()
        spacing = EVENT_MIN_SPACING - (time.monotonic() - self._last_event_pass)
        if spacing > 0:
            await asyncio.sleep(spacing)
        self._last_event_pass = time.monotonic()


def _flow(seen: _Seen) -> str:
    flow = seen.event
    if flow is None:
        return "inbound activity"
    return f"inbound TCP {flow.src}:{flow.sport} -> :{flow.dport} {flow.state}".rstrip()
