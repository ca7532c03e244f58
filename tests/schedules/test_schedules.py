"""Fast tests of calendar schedules: expressions through the real `systemd-analyze`,
validation with named errors, and the loop over a fake instance manager with a real
store (due runs, results, a run missed while the server was down, deleted instances)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from ember.errors import InvalidArgument, InvalidState, NotFound
from ember.images.models import utcnow
from ember.schedules import ScheduleManager, ScheduleRequest
from ember.schedules.calendar import parse
from ember.store import Store

BASE = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)  # a Friday


async def test_calendar_expressions_are_systemds() -> None:
    monday = await parse("Mon *-*-* 08:00", BASE)
    assert monday.normalized == "Mon *-*-* 08:00:00"
    assert monday.next_at == datetime(2027, 1, 18, 8, 0, tzinfo=UTC)
    assert (await parse("hourly", BASE)).next_at == BASE + timedelta(hours=1)
    assert (await parse("*:*:0/10", BASE)).next_at == BASE + timedelta(seconds=10)
    assert (await parse("2001-01-01", BASE)).next_at is None  # never again
    with pytest.raises(InvalidArgument) as caught:
        await parse("bogus x", BASE, field="schedules[x].when")
    assert "schedules[x].when: 'bogus x' is not a systemd calendar expression" in str(
        caught.value.message
    )


@dataclass
class FakeInstances:
    """Records the commands; an instance in `gone` does not exist, one in `refuse` says no."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    refuse: set[str] = field(default_factory=set)

    def get(self, ref: str) -> object:
        if ref in self.gone:
            raise NotFound(f"instance {ref!r} not found")
        return object()

    async def _do(self, what: str, ref: str) -> None:
        if ref in self.refuse:
            raise InvalidState(f"instance {ref!r} is Stopped: it cannot {what}")
        self.calls.append((what, ref))

    async def start(self, ref: str) -> None:
        await self._do("start", ref)

    async def stop(self, ref: str) -> None:
        await self._do("stop", ref)

    async def standby(self, ref: str) -> None:
        await self._do("standby", ref)

    async def delete(self, ref: str, *, graceful: bool) -> None:
        await self._do("delete", ref)
        self.gone.add(ref)


def rig(path: Path, instances: FakeInstances) -> ScheduleManager:
    return ScheduleManager(Store(path / "ember.db"), cast(Any, instances))


def ask(**fields: Any) -> ScheduleRequest:
    return ScheduleRequest.model_validate({"name": "s", "when": "daily", "action": "stop",
                                           **fields})  # fmt: skip


@pytest.mark.parametrize(
    ("requests", "words"),
    [
        ([ask(), ask()], "names must be unique"),
        ([ask(name="Bad Name")], "schedules.name"),
        ([ask(when="nope")], "schedules[s].when: 'nope' is not"),
        ([ask(action="exec")], "schedules[s].args: an exec needs the command"),
        ([ask(name=f"s{i}") for i in range(17)], "at most 16"),
    ],
)
async def test_refusals_name_the_schedule(
    tmp_path: Path, requests: list[ScheduleRequest], words: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await rig(tmp_path, FakeInstances()).check(requests)
    assert words in caught.value.message


async def test_due_schedules_run_and_record_their_result(tmp_path: Path) -> None:
    instances = FakeInstances(refuse={"b"})
    manager = rig(tmp_path, instances)
    stop, start, gone = await manager.check([ask(name="off", action="stop", args=["ignored"]),
                                             ask(name="on", action="start"),
                                             ask(name="gone", action="delete")])  # fmt: skip
    assert stop.args == [] and stop.next_at is not None and stop.next_at > utcnow()
    manager.put("a", [stop.model_copy(update={"next_at": utcnow()}), start])
    manager.put("b", [stop.model_copy(update={"next_at": utcnow()})])
    manager.put("c", [gone.model_copy(update={"next_at": utcnow()})])
    await manager.run_due()
    assert instances.calls == [("stop", "a"), ("delete", "c")]  # "on" is not due yet
    done = manager.of("a")[0]
    assert done.last_result == "ok" and done.next_at is not None and done.next_at > utcnow()
    assert manager.of("b")[0].last_result == "instance 'b' is Stopped: it cannot stop"
    await manager.run_due()
    assert instances.calls == [("stop", "a"), ("delete", "c")]  # ran once: next is tomorrow
    assert manager.of("c") == []  # gone with its instance


async def test_a_run_missed_while_down_happens_once_at_the_first_pass(tmp_path: Path) -> None:
    instances = FakeInstances()
    first = rig(tmp_path, instances)
    (nightly,) = await first.check([ask(action="standby")])
    first.put("a", [nightly.model_copy(update={"next_at": utcnow() - timedelta(hours=3)})])
    again = rig(tmp_path, instances)  # a restarted server on the same data
    again.start()
    for _ in range(50):
        if instances.calls:
            break
        await asyncio.sleep(0.05)
    await again.close()
    assert instances.calls == [("standby", "a")]
    assert again.of("a")[0].next_at > utcnow()  # type: ignore[operator]


async def test_schedules_of_a_deleted_instance_go(tmp_path: Path) -> None:
    instances = FakeInstances(gone={"a"})
    manager = rig(tmp_path, instances)
    manager.put("a", await manager.check([ask()]))
    await manager.run_due()
    assert manager.of("a") == []
    manager.put("b", await manager.check([ask()]))
    manager.put("b", [])  # an empty list clears them
    assert manager.of("b") == []
