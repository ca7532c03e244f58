"""The reclaimer over fake balloons and a fake /proc/meminfo: what a request applies and
holds, and what the pressure loop does under pressure, at ease and while held."""

from __future__ import annotations

from datetime import UTC, datetime

from ember.reclaim import ActionStatus, Guest, HostMemory, MemoryReclaimer
from ember.reclaim.planner import MIB

GIB = 1024 * MIB


class FakeBalloon:
    """Reaches its target at once, unless it can only go down to `stuck_at`."""

    def __init__(self, assigned: int, stuck_at: int = 0, fail: bool = False) -> None:
        self.assigned, self.actual, self.stuck_at, self.fail = assigned, assigned, stuck_at, fail

    async def set_target(self, value: int) -> None:
        if self.fail:
            raise OSError("QMP socket gone")
        self.actual = max(value, self.stuck_at)

    async def read_actual(self) -> int:
        return self.actual


class Host:
    def __init__(self, available: int) -> None:
        self.memory = HostMemory(total_bytes=16 * GIB, available_bytes=available)

    def __call__(self) -> HostMemory:
        return self.memory


def reclaimer(balloons: dict[str, FakeBalloon], host: Host) -> MemoryReclaimer:
    async def guests() -> list[Guest]:
        return [
            Guest(name, name, "qemu", b.assigned, b.actual, b.set_target, b.read_actual)
            for name, b in balloons.items()
        ]

    return MemoryReclaimer(
        guests, threshold_bytes=GIB, poll_seconds=60, host_memory=host, settle_seconds=0.2
    )


async def test_a_request_applies_the_plan_and_holds_it() -> None:
    balloons = {"a": FakeBalloon(GIB), "b": FakeBalloon(GIB)}
    memory = reclaimer(balloons, Host(8 * GIB))
    outcome = await memory.reclaim(256 * MIB, hold_seconds=60)
    assert (outcome.planned_bytes, outcome.applied_bytes) == (256 * MIB, 256 * MIB)
    assert {b.actual for b in balloons.values()} == {896 * MIB}
    assert [a.status for a in outcome.actions] == [ActionStatus.APPLIED] * 2
    assert outcome.hold_until is not None and outcome.hold_until > datetime.now(UTC)
    assert not outcome.pressure
    # Held: the loop, at ease, leaves the balloons as they are.
    assert await memory.pressure_pass() is None
    assert balloons["a"].actual == 896 * MIB
    # 0 bytes ends the hold; the next pass gives a step back to each guest.
    assert (await memory.reclaim(0)).hold_until is None
    released = await memory.pressure_pass()
    assert released is not None and {b.actual for b in balloons.values()} == {GIB}


async def test_a_dry_run_changes_nothing() -> None:
    balloons = {"a": FakeBalloon(GIB)}
    memory = reclaimer(balloons, Host(8 * GIB))
    outcome = await memory.reclaim(128 * MIB, dry_run=True)
    assert (outcome.planned_bytes, outcome.applied_bytes) == (128 * MIB, 0)
    assert outcome.actions[0].status == ActionStatus.PLANNED
    assert outcome.actions[0].target.planned_bytes == 896 * MIB
    assert balloons["a"].actual == GIB and memory.hold_until is None


async def test_a_guest_that_cannot_give_or_fails_is_reported_not_fatal() -> None:
    balloons = {"stuck": FakeBalloon(GIB, stuck_at=1000 * MIB), "gone": FakeBalloon(GIB, fail=True)}
    outcome = await reclaimer(balloons, Host(8 * GIB)).reclaim(512 * MIB)
    stuck, gone = outcome.actions
    assert stuck.status == ActionStatus.PARTIAL and stuck.applied_bytes == 24 * MIB
    assert gone.status == ActionStatus.ERROR and "QMP socket gone" in (gone.error or "")
    assert outcome.applied_bytes == 24 * MIB


async def test_pressure_reclaims_even_while_held_and_at_ease_gives_back() -> None:
    balloons = {"a": FakeBalloon(GIB), "b": FakeBalloon(2 * GIB)}
    host = Host(900 * MIB)  # under the 1 GiB threshold: wants 1.5 GiB - 900 MiB
    memory = reclaimer(balloons, host)
    memory.hold_until = datetime.max.replace(tzinfo=UTC)
    outcome = await memory.pressure_pass()
    assert outcome is not None and outcome.requested_bytes == 636 * MIB
    assert outcome.pressure and outcome.applied_bytes == 636 * MIB
    # Between the threshold and twice it: nothing moves either way.
    host.memory = HostMemory(16 * GIB, int(1.5 * GIB))
    memory.hold_until = None
    assert await memory.pressure_pass() is None
    host.memory = HostMemory(16 * GIB, 4 * GIB)
    while await memory.pressure_pass() is not None:
        pass
    assert (balloons["a"].actual, balloons["b"].actual) == (GIB, 2 * GIB)
