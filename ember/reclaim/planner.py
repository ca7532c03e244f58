"""How much guest memory each VM's balloon should hold back: pure functions, no I/O.

The same planner serves a request (`POST /resources/memory/reclaim`) and host
pressure (`controller.py`). Each guest keeps a protected floor, and one plan moves
one guest by at most its step; within those limits the bytes asked for are taken
from guests in proportion to what each can still give, so no guest is squeezed
to its floor while another has plenty.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20
# A guest keeps at least a quarter of its memory, and never less than this: a
# busybox guest under TCG uses ~30 MiB, a Debian one ~90 MiB.
MIN_FLOOR = 128 * MIB
FLOOR_FRACTION = 0.25
# One plan moves a guest by at most a quarter of its memory (at least this), so a
# guest gets time to settle between two steps and one request cannot empty it.
MIN_STEP = 32 * MIB
STEP_FRACTION = 0.25


@dataclass(frozen=True, slots=True)
class Candidate:
    """A running guest that has a balloon: its size and what the balloon leaves it now."""

    instance_id: str
    assigned_bytes: int
    current_bytes: int


@dataclass(frozen=True, slots=True)
class Target:
    instance_id: str
    floor_bytes: int
    previous_bytes: int
    planned_bytes: int

    @property
    def change_bytes(self) -> int:
        """Bytes the plan takes from the guest (negative: gives back)."""
        return self.previous_bytes - self.planned_bytes


def floor_of(assigned: int) -> int:
    return min(assigned, _mib_up(max(MIN_FLOOR, int(assigned * FLOOR_FRACTION))))


def step_of(assigned: int) -> int:
    return _mib_down(max(MIN_STEP, int(assigned * STEP_FRACTION)))


def plan_reclaim(candidates: list[Candidate], reclaim_bytes: int) -> list[Target]:
    """Targets taking up to `reclaim_bytes` in total (whole MiB per guest), within
    floors and steps, in proportion to each guest's room; every candidate is listed."""
    rooms = {c.instance_id: _room(c) for c in candidates}
    total = sum(rooms.values())
    share = min(1.0, reclaim_bytes / total) if total else 0.0
    takes = {i: _mib_down(int(room * share)) for i, room in rooms.items()}
    # Whole MiB rounding leaves a little short: one more MiB from the roomiest guests.
    short = min(reclaim_bytes, total) - sum(takes.values())
    for instance_id in sorted(rooms, key=lambda i: (takes[i] - rooms[i], i)):
        if short < MIB:
            break
        if rooms[instance_id] - takes[instance_id] >= MIB:
            takes[instance_id] += MIB
            short -= MIB
    return [_target(c, c.current_bytes - takes[c.instance_id]) for c in candidates]


def plan_release(candidates: list[Candidate]) -> list[Target]:
    """Targets giving each guest back up to one step, toward its assigned memory."""
    return [
        _target(c, min(c.assigned_bytes, c.current_bytes + step_of(c.assigned_bytes)))
        for c in candidates
    ]


def _room(candidate: Candidate) -> int:
    above_floor = candidate.current_bytes - floor_of(candidate.assigned_bytes)
    return _mib_down(max(0, min(step_of(candidate.assigned_bytes), above_floor)))


def _target(candidate: Candidate, planned: int) -> Target:
    return Target(
        instance_id=candidate.instance_id,
        floor_bytes=floor_of(candidate.assigned_bytes),
        previous_bytes=candidate.current_bytes,
        planned_bytes=planned,
    )


def _mib_down(value: int) -> int:
    return value // MIB * MIB


def _mib_up(value: int) -> int:
    return -(-value // MIB) * MIB
