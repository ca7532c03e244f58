"""The reclaim planner (pure): floors, per-VM steps, proportional shares, whole MiB."""

from __future__ import annotations

from ember.reclaim.planner import (
    MIB,
    Candidate,
    Target,
    floor_of,
    plan_reclaim,
    plan_release,
    step_of,
)

GIB = 1024 * MIB


def guest(name: str, assigned: int, current: int | None = None) -> Candidate:
    return Candidate(name, assigned, assigned if current is None else current)


def taken(targets: list[Target]) -> dict[str, int]:
    return {t.instance_id: t.change_bytes for t in targets}


def test_floors_and_steps_scale_with_the_guest_and_have_minimums() -> None:
    assert floor_of(256 * MIB) == 128 * MIB  # the minimum floor
    assert floor_of(4 * GIB) == GIB  # a quarter
    assert floor_of(64 * MIB) == 64 * MIB  # never above the guest itself
    assert step_of(256 * MIB) == 64 * MIB
    assert step_of(64 * MIB) == 32 * MIB  # the minimum step


def test_one_plan_takes_at_most_one_step_per_guest() -> None:
    targets = plan_reclaim([guest("a", GIB), guest("b", 256 * MIB)], 10 * GIB)
    assert taken(targets) == {"a": 256 * MIB, "b": 64 * MIB}
    assert [t.planned_bytes for t in targets] == [768 * MIB, 192 * MIB]


def test_a_guest_at_or_near_its_floor_gives_only_what_is_above_it() -> None:
    near = guest("near", 256 * MIB, current=150 * MIB)
    at = guest("at", 256 * MIB, current=128 * MIB)
    targets = plan_reclaim([near, at], GIB)
    assert taken(targets) == {"near": 22 * MIB, "at": 0}
    assert all(t.planned_bytes >= t.floor_bytes for t in targets)


def test_the_request_is_shared_in_proportion_to_room_in_whole_mib() -> None:
    big, small = guest("big", 2 * GIB), guest("small", 512 * MIB)  # room 512 and 128 MiB
    targets = plan_reclaim([big, small], 100 * MIB)
    assert sum(taken(targets).values()) == 100 * MIB
    assert taken(targets) == {"big": 80 * MIB, "small": 20 * MIB}
    odd = plan_reclaim([guest("x", GIB), guest("y", GIB), guest("z", GIB)], 100 * MIB)
    assert sum(taken(odd).values()) == 100 * MIB  # rounding short-fall handed out
    assert all(v % MIB == 0 for v in taken(odd).values())


def test_nothing_asked_or_nothing_to_give_plans_no_change() -> None:
    assert taken(plan_reclaim([guest("a", GIB)], 0)) == {"a": 0}
    assert plan_reclaim([], GIB) == []


def test_release_gives_back_one_step_and_never_more_than_assigned() -> None:
    targets = plan_release([guest("a", GIB, current=512 * MIB), guest("b", GIB, 900 * MIB)])
    assert [t.planned_bytes for t in targets] == [768 * MIB, GIB]
