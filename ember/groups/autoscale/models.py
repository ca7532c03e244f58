"""Autoscale in the seed's words (Unikraft Cloud's `CreateAutoscaleConfiguration*`,
`AutoscalePolicy`, `AutoscalePolicyStep`): what is stored per service group, and the
decisions the loop made, each with its reason."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from ember.images.models import utcnow
from ember.store import StoredRecord

# "cpu": the mean CPU utilisation (percent of the vCPUs) of the group's warm members;
# "inflight" (Ember extension): the mean number of requests Caddy has in flight per member.
Metric = Literal["cpu", "inflight"]
AdjustmentType = Literal["change", "exact", "percentage"]
ScaleIn = Literal["delete", "standby"]
Action = Literal["scale_out", "scale_in", "blocked"]


class AutoscalePolicyStep(BaseModel):
    """Applies while lower_bound <= metric < upper_bound (a missing bound is open)."""

    adjustment: int
    lower_bound: float | None = None
    upper_bound: float | None = None


class AutoscalePolicy(BaseModel):
    """A step policy: the step the metric falls in says how the size changes."""

    name: str
    enabled: bool = True
    metric: Metric = "cpu"
    adjustment_type: AdjustmentType = "change"
    steps: list[AutoscalePolicyStep]


class AutoscaleRecord(StoredRecord):
    """One per service group (`id` and `name` are the group's id)."""

    min_size: int
    max_size: int
    warmup_time_ms: int
    cooldown_time_ms: int
    # A create request without `name` (each member gets its own): see `members.py`.
    create_args: dict[str, Any]
    scale_in: ScaleIn = "delete"
    policies: list[AutoscalePolicy] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    # The last change of size: the cooldown runs from here, across server restarts.
    last_scaled_at: datetime | None = None


class Decision(BaseModel):
    """What one pass decided for a group and why; stored, newest kept."""

    at: datetime = Field(default_factory=utcnow)
    action: Action
    policy: str | None = None
    metric: Metric | None = None
    value: float | None = None
    size_before: int
    size_after: int
    reason: str
    instances: list[str] = Field(default_factory=list)  # the names made, woken or retired


__all__ = [
    "Action",
    "AdjustmentType",
    "AutoscalePolicy",
    "AutoscalePolicyStep",
    "AutoscaleRecord",
    "Decision",
    "Metric",
    "ScaleIn",
]
