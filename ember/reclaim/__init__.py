"""Memory reclaim: a planner over guests' balloons, run on request and under host pressure."""

from ember.reclaim.controller import (
    Action,
    ActionStatus,
    Guest,
    HostMemory,
    MemoryReclaimer,
    Outcome,
    read_host_memory,
)
from ember.reclaim.planner import Candidate, Target, plan_reclaim, plan_release

__all__ = [
    "Action",
    "ActionStatus",
    "Candidate",
    "Guest",
    "HostMemory",
    "MemoryReclaimer",
    "Outcome",
    "Target",
    "plan_reclaim",
    "plan_release",
    "read_host_memory",
]
