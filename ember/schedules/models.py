"""Calendar schedules of an instance in the seed's words (Unikraft Cloud's `Schedule`:
`name`, `when`, `action`, `args`, `next_at`), plus what the last run did."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ember.store import StoredRecord

ScheduleAction = Literal["start", "stop", "standby", "delete", "exec"]


class ScheduleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(description="Unique within the instance")
    when: StrictStr = Field(description="A systemd calendar expression, e.g. 'Mon *-*-* 08:00'")
    action: ScheduleAction
    args: list[StrictStr] | None = Field(
        default=None, description="The command of an `exec` (the first is the executable)"
    )


class Schedule(BaseModel):
    name: str
    when: str  # as systemd normalised it
    action: ScheduleAction
    args: list[str] = Field(default_factory=list)
    next_at: datetime | None = None  # None: it never elapses again
    last_at: datetime | None = None
    last_result: str | None = None  # "ok", "exit 0", or why it failed


class InstanceSchedules(StoredRecord):
    """One per instance that has schedules (`id` and `name` are the instance's id)."""

    schedules: list[Schedule]


__all__ = ["InstanceSchedules", "Schedule", "ScheduleAction", "ScheduleRequest"]
