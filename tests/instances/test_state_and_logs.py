"""Instance logic that needs no VM: state rules, log tail/follow, durations."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ember.errors import InvalidArgument, InvalidState
from ember.instances.logs import read_log, record_event
from ember.instances.state import State, can_transition, check_transition
from ember.units import parse_duration


def test_single_hop_rules() -> None:
    assert can_transition(State.CREATED, State.INITIALIZING)
    assert can_transition(State.INITIALIZING, State.RUNNING)
    assert can_transition(State.RUNNING, State.STOPPED)
    assert can_transition(State.STOPPED, State.INITIALIZING)
    assert not can_transition(State.STOPPED, State.RUNNING)
    assert not can_transition(State.CREATED, State.RUNNING)
    assert all(can_transition(state, State.UNKNOWN) for state in State)
    assert all(can_transition(State.UNKNOWN, state) for state in State)
    with pytest.raises(InvalidState, match="cannot go from Stopped to Paused"):
        check_transition(State.STOPPED, State.PAUSED)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("2m", 120), ("1m30s", 90), ("500ms", 0.5), ("1h", 3600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "s", "1x", "1m 30s", "-1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidArgument, match="timeout"):
        parse_duration(text, field="timeout")


async def collect(
    path: Path, *, tail: int, follow: bool = False, ended: Callable[[], bool] | None = None
) -> list[str]:
    return [line async for line in read_log(path, tail=tail, follow=follow, ended=ended)]


async def test_tail_returns_last_complete_lines(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(f"line {i}\r\n".encode() for i in range(500)) + b"partial")
    assert await collect(log, tail=3) == ["line 497", "line 498", "line 499"]
    assert await collect(log, tail=0) == []
    assert await collect(tmp_path / "missing.log", tail=5) == []


async def test_follow_streams_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("old\n")
    seen: list[str] = []

    async def follow() -> None:
        async for line in read_log(log, tail=10, follow=True):
            seen.append(line)
            if len(seen) == 3:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    with log.open("a") as out:
        out.write("new 1\nnew")
        out.flush()
        await asyncio.sleep(0.3)
        out.write(" 2\n")
    await asyncio.wait_for(task, 5)
    assert seen == ["old", "new 1", "new 2"]


async def test_follow_ends_when_the_instance_stops(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("booted\n")
    stopped = False
    seen: list[str] = []

    async def follow() -> None:
        async for line in read_log(log, tail=10, follow=True, ended=lambda: stopped):
            seen.append(line)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    log.write_text("booted\npowering off\nlast words")  # then the instance is Stopped
    stopped = True
    await asyncio.wait_for(task, 5)  # ends by itself, having read everything
    assert seen == ["booted", "powering off", "last words"]
    # Following an instance that is stopped already: the tail (complete lines), what
    # follows it, then the end.
    after = await asyncio.wait_for(collect(log, tail=1, follow=True, ended=lambda: True), 5)
    assert after == ["powering off", "last words"]


def test_operations_log_lines(tmp_path: Path) -> None:
    record_event(tmp_path / "logs" / "hypeman.log", "state -> Running")
    line = (tmp_path / "logs" / "hypeman.log").read_text()
    assert line.endswith("Z state -> Running\n")


async def test_follow_ends_when_the_instance_is_deleted(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    log = instance / "logs" / "hypeman.log"
    record_event(log, "state -> Running")
    seen: list[str] = []

    async def follow() -> None:
        async for line in read_log(log, tail=10, follow=True):
            seen.append(line)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    shutil.rmtree(instance)
    await asyncio.wait_for(task, 5)  # ends cleanly, no FileNotFoundError
    assert len(seen) == 1 and seen[0].endswith("state -> Running")
    # Following a log whose instance directory is already gone ends at once and
    # does not bring the directory back.
    assert await asyncio.wait_for(collect(log, tail=10, follow=True), 5) == []
    assert not instance.exists()
