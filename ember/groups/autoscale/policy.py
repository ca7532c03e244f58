"""Pure: what size a group should have, from its policies and measured metrics.

Step semantics are AWS step scaling's, which Unikraft Cloud's shape follows: a step
applies while `lower_bound <= value < upper_bound` (a missing bound is open);
`change` adds the adjustment, `exact` sets the size, `percentage` adds that percent
of the current size, rounded toward zero but by at least one member. The result is
kept within `min_size..max_size`. With several policies the largest size wins (a
group is never shrunk by one policy while another asks for more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from ember.groups.autoscale.models import (
    AdjustmentType,
    AutoscalePolicy,
    AutoscalePolicyStep,
    AutoscaleRecord,
    Metric,
)


@dataclass(frozen=True)
class Proposal:
    """A size other than the current one, and why."""

    target: int
    reason: str
    policy: str | None = None
    metric: Metric | None = None
    value: float | None = None


def matching_step(policy: AutoscalePolicy, value: float) -> AutoscalePolicyStep | None:
    for step in policy.steps:
        lower = -math.inf if step.lower_bound is None else step.lower_bound
        upper = math.inf if step.upper_bound is None else step.upper_bound
        if lower <= value < upper:
            return step
    return None


def adjusted(current: int, kind: AdjustmentType, adjustment: int) -> int:
    """The size an adjustment asks for (before min/max)."""
    if kind == "exact":
        return adjustment
    if kind == "change":
        return current + adjustment
    delta = current * adjustment / 100
    if delta == 0:
        return current + (0 if adjustment == 0 else int(math.copysign(1, adjustment)))
    whole = int(delta)  # toward zero, but at least one member either way
    return current + (whole if whole else int(math.copysign(1, delta)))


def bounded(config: AutoscaleRecord, size: int) -> int:
    return max(config.min_size, min(config.max_size, size))


def cooling(config: AutoscaleRecord, now: datetime) -> bool:
    last = config.last_scaled_at
    return last is not None and now - last < timedelta(milliseconds=config.cooldown_time_ms)


def decide(
    config: AutoscaleRecord, current: int, values: dict[Metric, float], now: datetime
) -> Proposal | None:
    """The size to go to, or None to stay. Outside min/max is corrected at once; a
    policy acts only after the cooldown of the last change."""
    if current < config.min_size:
        return Proposal(config.min_size, f"{current} members, below min_size {config.min_size}")
    if current > config.max_size:
        return Proposal(config.max_size, f"{current} members, above max_size {config.max_size}")
    if cooling(config, now):
        return None
    best: Proposal | None = None
    for policy in config.policies:
        value = values.get(policy.metric)
        proposal = _propose(config, policy, current, value) if policy.enabled else None
        if proposal is not None and (best is None or proposal.target > best.target):
            best = proposal
    return best


def _propose(
    config: AutoscaleRecord, policy: AutoscalePolicy, current: int, value: float | None
) -> Proposal | None:
    step = matching_step(policy, value) if value is not None else None
    if step is None or value is None:
        return None
    wanted = adjusted(current, policy.adjustment_type, step.adjustment)
    target = bounded(config, wanted)
    if target == current:
        return None
    capped = ""
    if wanted != target:
        capped = f" (capped at {'max' if wanted > target else 'min'}_size {target})"
    reason = (
        f"policy {policy.name!r}: {policy.metric} {value:.1f} in "
        f"[{_bound(step.lower_bound, '-inf')}, {_bound(step.upper_bound, 'inf')}) -> "
        f"{policy.adjustment_type} {step.adjustment:+d}: {current} -> {target}{capped}"
    )
    return Proposal(target, reason, policy.name, policy.metric, round(value, 2))


def _bound(value: float | None, open_end: str) -> str:
    return open_end if value is None else f"{value:g}"


__all__ = ["Proposal", "adjusted", "bounded", "cooling", "decide", "matching_step"]
