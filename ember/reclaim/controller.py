"""Memory reclaim: the planner's targets applied to running guests' balloons, on request
(`reclaim`) and when the host runs short of memory (`pressure_pass`, a PeriodicTask).

A request that applies its plan also sets a hold (`hold_for`, default 5 minutes):
until it ends the balloons stay as they are. With no hold and a host at ease
(MemAvailable at least twice the threshold), each pass gives every ballooned guest
back one step toward its assigned memory. Under pressure (MemAvailable below the
threshold) a pass plans to bring MemAvailable back to 1.5x the threshold, whatever
the hold says. All passes and requests take one lock: two plans never interleave.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from ember.reclaim.planner import MIB, Candidate, Target, plan_reclaim, plan_release
from ember.tasks import PeriodicTask

log = logging.getLogger("ember.reclaim")

MIN_THRESHOLD = 512 * MIB
THRESHOLD_FRACTION = 0.10  # of MemTotal, unless the threshold is configured
DEFAULT_HOLD_SECONDS = 300.0
SETTLE_SECONDS = 10.0  # how long one guest's balloon may take to reach its target


class ActionStatus(StrEnum):
    PLANNED = "planned"  # dry run
    APPLIED = "applied"  # the balloon reached the target
    PARTIAL = "partial"  # still short of it after SETTLE_SECONDS (the guest could not give more)
    UNCHANGED = "unchanged"  # nothing planned for this guest (at its floor, or not needed)
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Guest:
    """A running guest with a balloon, and how to move it (built by ember/instances)."""

    instance_id: str
    instance_name: str
    hypervisor: str
    assigned_bytes: int
    current_bytes: int  # what its balloon leaves it now
    set_target: Callable[[int], Awaitable[None]]
    read_actual: Callable[[], Awaitable[int]]


Guests = Callable[[], Awaitable[list[Guest]]]


@dataclass(frozen=True, slots=True)
class HostMemory:
    total_bytes: int
    available_bytes: int


def read_host_memory(meminfo: Path = Path("/proc/meminfo")) -> HostMemory:
    fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
    kib = {key: int(value.split()[0]) for key, value in fields.items()}
    return HostMemory(kib["MemTotal"] * 1024, kib["MemAvailable"] * 1024)


@dataclass(frozen=True, slots=True)
class Action:
    guest: Guest
    target: Target
    actual_bytes: int  # what the balloon leaves the guest after the step
    status: ActionStatus
    error: str | None = None

    @property
    def applied_bytes(self) -> int:
        return max(0, self.target.previous_bytes - self.actual_bytes)


@dataclass(frozen=True, slots=True)
class Outcome:
    requested_bytes: int
    actions: list[Action]
    host: HostMemory
    pressure: bool
    hold_until: datetime | None

    @property
    def planned_bytes(self) -> int:
        return sum(max(0, a.target.change_bytes) for a in self.actions)

    @property
    def applied_bytes(self) -> int:
        return sum(a.applied_bytes for a in self.actions)


class MemoryReclaimer:
    def __init__(
        self,
        guests: Guests,
        *,
        threshold_bytes: int | None,
        poll_seconds: float,
        host_memory: Callable[[], HostMemory] = read_host_memory,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        """`threshold_bytes`: host pressure below this MemAvailable (None: 10% of
        MemTotal, at least 512 MiB)."""
        self._guests, self._threshold, self._host = guests, threshold_bytes, host_memory
        self._settle = settle_seconds
        self._lock = asyncio.Lock()
        self.hold_until: datetime | None = None
        self.task = PeriodicTask("memory reclaim", self.pressure_pass, poll_seconds, log=log)

    def threshold(self, host: HostMemory) -> int:
        if self._threshold is not None:
            return self._threshold
        return max(MIN_THRESHOLD, int(host.total_bytes * THRESHOLD_FRACTION))

    def held(self) -> bool:
        return self.hold_until is not None and datetime.now(UTC) < self.hold_until

    async def reclaim(
        self,
        reclaim_bytes: int,
        *,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
        dry_run: bool = False,
        reason: str | None = None,
    ) -> Outcome:
        """Plan taking `reclaim_bytes` across the running guests and, unless `dry_run`,
        apply it and hold it for `hold_seconds`; 0 bytes ends the hold (the guests get
        their memory back step by step from the next pass)."""
        async with self._lock:
            guests = await self._guests()
            targets = plan_reclaim([_candidate(g) for g in guests], reclaim_bytes)
            if dry_run:
                pairs = zip(guests, targets, strict=True)
                actions = [_unapplied(g, t, ActionStatus.PLANNED) for g, t in pairs]
            else:
                actions = await self._apply(guests, targets)
                held = reclaim_bytes > 0
                self.hold_until = _now() + timedelta(seconds=hold_seconds) if held else None
            outcome = self._outcome(reclaim_bytes, actions)
        log.info(
            "memory reclaim requested: %d bytes asked, %d planned, %d applied%s (%s)",
            reclaim_bytes, outcome.planned_bytes, outcome.applied_bytes,
            " (dry run)" if dry_run else "", reason or "no reason given",
        )  # fmt: skip
        return outcome

    async def pressure_pass(self) -> Outcome | None:
        """One pass of the loop: reclaim under pressure, give back when at ease and not
        held; None when it did nothing."""
        host = self._host()
        threshold = self.threshold(host)
        async with self._lock:
            if host.available_bytes < threshold:
                want = threshold + threshold // 2 - host.available_bytes
                guests = await self._guests()
                targets = plan_reclaim([_candidate(g) for g in guests], want)
            elif not self.held() and host.available_bytes >= 2 * threshold:
                guests = [g for g in await self._guests() if g.current_bytes < g.assigned_bytes]
                targets = plan_release([_candidate(g) for g in guests])
                want = 0
            else:
                return None
            if not any(t.change_bytes for t in targets):
                return None
            outcome = self._outcome(want, await self._apply(guests, targets))
        log.info(
            "memory reclaim pass: MemAvailable %d MiB (threshold %d MiB), %d MiB reclaimed, "
            "%d MiB given back", host.available_bytes // MIB, threshold // MIB,
            outcome.applied_bytes // MIB,
            sum(max(0, -a.target.change_bytes) for a in outcome.actions) // MIB,
        )  # fmt: skip
        return outcome

    def _outcome(self, requested: int, actions: list[Action]) -> Outcome:
        host = self._host()
        return Outcome(
            requested_bytes=requested, actions=actions, host=host,
            pressure=host.available_bytes < self.threshold(host),
            hold_until=self.hold_until if self.held() else None,
        )  # fmt: skip

    async def _apply(self, guests: list[Guest], targets: list[Target]) -> list[Action]:
        steps = (self._step(g, t) for g, t in zip(guests, targets, strict=True))
        return list(await asyncio.gather(*steps))

    async def _step(self, guest: Guest, target: Target) -> Action:
        """Move one balloon and wait (up to the settle time) until it gets there."""
        if not target.change_bytes:
            return _unapplied(guest, target, ActionStatus.UNCHANGED)
        try:
            await guest.set_target(target.planned_bytes)
            deadline = time.monotonic() + self._settle
            while abs((actual := await guest.read_actual()) - target.planned_bytes) >= MIB:
                if time.monotonic() > deadline:
                    return Action(guest, target, actual, ActionStatus.PARTIAL)
                await asyncio.sleep(0.05)
        except Exception as exc:  # one guest's failure is its action's, not the request's
            return _unapplied(guest, target, ActionStatus.ERROR, str(exc) or repr(exc))
        return Action(guest, target, actual, ActionStatus.APPLIED)


def _candidate(guest: Guest) -> Candidate:
    return Candidate(guest.instance_id, guest.assigned_bytes, guest.current_bytes)


def _unapplied(
    guest: Guest, target: Target, status: ActionStatus, error: str | None = None
) -> Action:
    return Action(guest, target, target.previous_bytes, status, error)


def _now() -> datetime:
    return datetime.now(UTC)
