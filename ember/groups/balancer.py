"""The waker's decision for one request Caddy could not place (pure).

Caddy places every request it can by itself (least_conn under `max_requests`); what
reaches the waker is a request to a group with no awake instance, or one that found
every awake instance at its limit. Then, in this order:

1. an awake instance under the soft limit: serve there (the least loaded);
2. an instance being woken, or asleep, under the soft limit: join or start its wake
   (a waking one first, so a burst costs one restore);
3. an awake or waking instance under the hard limit: serve or join there;
4. nothing: fail at once, saying why (no instance, or every one at the hard limit).

The load of an awake instance is Caddy's in-flight count; of a waking one, the
requests already held for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Phase = Literal["awake", "waking", "asleep"]


@dataclass(frozen=True)
class Candidate:
    instance_id: str
    name: str
    phase: Phase
    load: int


@dataclass(frozen=True)
class Decision:
    action: Literal["serve", "wake", "refuse"]
    instance_id: str | None = None
    reason: str = ""


def decide(candidates: Sequence[Candidate], soft_limit: int, hard_limit: int) -> Decision:
    def least(phases: tuple[Phase, ...], limit: int) -> Candidate | None:
        fitting = [c for c in candidates if c.phase in phases and c.load < limit]
        order = {phase: rank for rank, phase in enumerate(phases)}
        return min(fitting, key=lambda c: (order[c.phase], c.load), default=None)

    steps: list[tuple[tuple[Phase, ...], int]] = [
        (("awake",), soft_limit),
        (("waking", "asleep"), soft_limit),
        (("awake", "waking"), hard_limit),
    ]
    for phases, limit in steps:
        chosen = least(phases, limit)
        if chosen is not None:
            action: Literal["serve", "wake"] = "serve" if chosen.phase == "awake" else "wake"
            return Decision(action, chosen.instance_id)
    if not candidates:
        return Decision("refuse", reason="the group has no instance that can serve")
    return Decision(
        "refuse",
        reason=f"all {len(candidates)} instances are at the hard limit of {hard_limit} "
        "concurrent requests",
    )


__all__ = ["Candidate", "Decision", "Phase", "decide"]
