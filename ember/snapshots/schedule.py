"""Snapshot schedules: validation and the scheduler task.

Each schedule is a record (`snapshot_schedules`) holding its next run, last
run, last snapshot and last error, so a restarted server goes on where the
last one stopped: a run missed while it was down happens at its first tick,
and the cadence is kept (the next run stays on the interval's grid). The
scheduler wakes every `EMBER_SNAPSHOT_SCHEDULE_TICK_SECONDS` (a test may
shorten it; the rule's minimum interval of one minute stays). Retention only
ever deletes snapshots that a schedule made (`scheduled`), never named ones.

Taking and deleting snapshots are given as functions: this package sits
below the instance core.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from ember.errors import EmberError, InvalidArgument
from ember.images.models import utcnow
from ember.snapshots.models import Retention, ScheduleRecord, SnapshotRecord
from ember.snapshots.store import SnapshotStore
from ember.tasks import PeriodicTask
from ember.units import parse_duration
from ember.validation import validate_name, validate_tags

log = logging.getLogger("ember.snapshots")
MIN_INTERVAL_SECONDS = 60.0
MAX_PREFIX = 47  # + "-" + a 15-character stamp = 63, the longest name


class RetentionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_count: StrictInt | None = None
    max_age: StrictStr | None = None


class ScheduleRequest(BaseModel):
    """Hypeman's `SetSnapshotScheduleRequest`."""

    model_config = ConfigDict(extra="forbid")

    interval: StrictStr
    retention: RetentionRequest
    metadata: dict[str, str] | None = None
    name_prefix: StrictStr | None = None


def plan_schedule(
    instance_id: str, request: ScheduleRequest, current: ScheduleRecord | None
) -> ScheduleRecord:
    """The schedule a PUT asks for, validated; InvalidArgument naming the field. A changed
    interval starts a new cadence; otherwise the next run stays."""
    seconds = parse_duration(request.interval, field="interval")
    if seconds < MIN_INTERVAL_SECONDS:
        raise InvalidArgument(f"interval: {request.interval!r} is below the minimum of 1m")
    retention = _retention(request.retention)
    prefix = request.name_prefix or None
    if prefix is not None:
        if len(prefix) > MAX_PREFIX:
            raise InvalidArgument(f"name_prefix: at most {MAX_PREFIX} characters")
        validate_name(prefix, field="name_prefix")
    metadata = validate_tags(request.metadata, field="metadata")
    now = utcnow()
    keep_cadence = current is not None and current.interval_seconds == seconds
    return ScheduleRecord(
        instance_id=instance_id,
        interval=request.interval,
        interval_seconds=seconds,
        retention=retention,
        name_prefix=prefix,
        metadata=metadata,
        created_at=current.created_at if current else now,
        updated_at=now,
        next_run_at=current.next_run_at if current and keep_cadence else now + _delta(seconds),
        last_run_at=current.last_run_at if current else None,
        last_snapshot_id=current.last_snapshot_id if current else None,
        last_error=current.last_error if current else None,
    )


def _retention(request: RetentionRequest) -> Retention:
    if request.max_count is None and not request.max_age:
        raise InvalidArgument("retention: give max_count, max_age or both")
    if request.max_count is not None and request.max_count < 0:
        raise InvalidArgument("retention.max_count: must not be negative (0: no count limit)")
    age = None
    if request.max_age:
        age = parse_duration(request.max_age, field="retention.max_age")
        if age <= 0:
            raise InvalidArgument("retention.max_age: must be positive")
    return Retention(max_count=request.max_count or 0, max_age=request.max_age or None,
                     max_age_seconds=age)  # fmt: skip


def _delta(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def snapshot_name(schedule: ScheduleRecord, when: datetime) -> str:
    return f"{schedule.name_prefix or 'scheduled'}-{when.astimezone(UTC):%Y%m%d-%H%M%S}"


def next_run(schedule: ScheduleRecord, now: datetime) -> datetime:
    """The first time on the schedule's grid after `now`."""
    step = _delta(schedule.interval_seconds)
    nxt = schedule.next_run_at + step
    if nxt <= now:
        missed = (now - schedule.next_run_at) // step
        nxt = schedule.next_run_at + step * (missed + 1)
    return nxt


def to_prune(
    snapshots: list[SnapshotRecord], retention: Retention, now: datetime
) -> list[SnapshotRecord]:
    """The scheduled snapshots (of one instance) that retention removes: beyond the newest
    `max_count`, and older than `max_age`."""
    scheduled = sorted((s for s in snapshots if s.scheduled), key=lambda s: s.created_at)
    doomed: dict[str, SnapshotRecord] = {}
    if retention.max_count > 0:
        for snapshot in scheduled[: max(len(scheduled) - retention.max_count, 0)]:
            doomed[snapshot.id] = snapshot
    if retention.max_age_seconds:
        cutoff = now - _delta(retention.max_age_seconds)
        for snapshot in scheduled:
            if snapshot.created_at < cutoff:
                doomed[snapshot.id] = snapshot
    return list(doomed.values())


TakeSnapshot = Callable[[ScheduleRecord, str], Awaitable[SnapshotRecord]]
DeleteSnapshot = Callable[[str], Awaitable[None]]


class Scheduler:
    """One task running every due schedule; records what happened on the schedule."""

    def __init__(
        self,
        store: SnapshotStore,
        take: TakeSnapshot,
        delete: DeleteSnapshot,
        exists: Callable[[str], bool],
        tick_seconds: float,
    ) -> None:
        self.store, self.take, self.delete, self.exists = store, take, delete, exists
        self.tick = tick_seconds
        self._loop = PeriodicTask("snapshot scheduler pass", self.run_due, self.tick, log=log)

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()

    async def run_due(self) -> None:
        for schedule in self.store.schedules():
            if not self.exists(schedule.instance_id):  # deleted with its instance
                self.store.delete_schedule(schedule.instance_id)
                continue
            if schedule.next_run_at <= utcnow():
                await self.run(schedule)

    async def run(self, schedule: ScheduleRecord) -> None:
        now = utcnow()
        snapshot_id, error = None, None
        try:
            snapshot = await self.take(schedule, snapshot_name(schedule, now))
            snapshot_id = snapshot.id
        except EmberError as exc:
            error = exc.message
        except Exception as exc:
            log.exception("scheduled snapshot failed", extra={"instance": schedule.instance_id})
            error = str(exc)
        current = self.store.schedule(schedule.instance_id)
        if current is None:  # deleted meanwhile
            return
        current.last_run_at = now
        current.last_error = error
        current.last_snapshot_id = snapshot_id or current.last_snapshot_id
        if current.interval_seconds == schedule.interval_seconds:
            current.next_run_at = next_run(schedule, utcnow())
        self.store.put_schedule(current)
        await self.prune(current)

    async def prune(self, schedule: ScheduleRecord) -> None:
        snapshots = self.store.find(instance_id=schedule.instance_id)
        for snapshot in to_prune(snapshots, schedule.retention, utcnow()):
            try:
                await self.delete(snapshot.id)
            except EmberError as exc:
                log.warning("cannot prune snapshot %s: %s", snapshot.id, exc.message)
