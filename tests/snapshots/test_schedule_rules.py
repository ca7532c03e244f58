"""Snapshot schedule rules (pure): validation, cadence, retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ember.errors import InvalidArgument
from ember.snapshots.models import Retention, SnapshotRecord
from ember.snapshots.schedule import (
    RetentionRequest,
    ScheduleRequest,
    next_run,
    plan_schedule,
    snapshot_name,
    to_prune,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def request(interval: str = "1m", **retention: object) -> ScheduleRequest:
    return ScheduleRequest(interval=interval, retention=RetentionRequest.model_validate(retention))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (request("30s", max_count=1), "interval"),
        (request("soon", max_count=1), "interval"),
        (request("1m"), "retention"),
        (request("1m", max_count=-1), "retention.max_count"),
        (request("1m", max_age="-5m"), "retention.max_age"),
        (
            ScheduleRequest(
                interval="1m", retention=RetentionRequest(max_count=1), name_prefix="x" * 48
            ),
            "name_prefix",
        ),
        (
            ScheduleRequest(
                interval="1m", retention=RetentionRequest(max_count=1), name_prefix="Bad_Prefix"
            ),
            "name_prefix",
        ),
    ],
)
def test_invalid_schedules_name_the_field(body: ScheduleRequest, field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        plan_schedule("i1", body, None)
    assert refused.value.message.startswith(field)


def test_changed_interval_starts_a_new_cadence_other_changes_keep_it() -> None:
    first = plan_schedule("i1", request("1m", max_count=2), None)
    kept = plan_schedule("i1", request("1m", max_count=5), first)
    assert kept.next_run_at == first.next_run_at and kept.created_at == first.created_at
    moved = plan_schedule("i1", request("2m", max_count=5), first)
    assert moved.next_run_at > first.next_run_at


def test_next_run_stays_on_the_grid_after_missed_runs() -> None:
    schedule = plan_schedule("i1", request("1m", max_count=2), None)
    schedule.next_run_at = T0
    assert next_run(schedule, T0 + timedelta(seconds=1)) == T0 + timedelta(minutes=1)
    assert next_run(schedule, T0 + timedelta(minutes=5, seconds=3)) == T0 + timedelta(minutes=6)


def snap(i: int, scheduled: bool = True) -> SnapshotRecord:
    return SnapshotRecord(
        id=f"s{i}", kind="Standby", source_instance_id="i1", source_instance_name="a",
        source_hypervisor="qemu", created_at=T0 + timedelta(minutes=i), source={},
        scheduled=scheduled,
    )  # fmt: skip


def test_retention_prunes_only_scheduled_snapshots() -> None:
    snapshots = [snap(0, scheduled=False), snap(1), snap(2), snap(3)]
    doomed = to_prune(snapshots, Retention(max_count=2), T0 + timedelta(minutes=4))
    assert [s.id for s in doomed] == ["s1"]
    by_age = Retention(max_age="150s", max_age_seconds=150)
    doomed = to_prune(snapshots, by_age, T0 + timedelta(minutes=4))
    assert sorted(s.id for s in doomed) == ["s1"]
    assert to_prune(snapshots, Retention(max_count=0), T0) == []


def test_generated_names_fit_the_name_rule() -> None:
    schedule = plan_schedule(
        "i1", ScheduleRequest(interval="1m", retention=RetentionRequest(max_count=1),
                              name_prefix="p" * 47), None,
    )  # fmt: skip
    name = snapshot_name(schedule, T0)
    assert len(name) == 63 and name.endswith("-20260101-000000")
