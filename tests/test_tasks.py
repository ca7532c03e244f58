"""PeriodicTask: passes go on after a failing one, a wake cuts the wait short, close
cancels the task. No timings: every wait is on an event the test sets."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from ember.tasks import BackgroundJobs, PeriodicTask, Tasks

log = logging.getLogger("tests.tasks")


async def test_a_failing_pass_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    passes: list[int] = []
    third = asyncio.Event()

    async def step() -> None:
        passes.append(len(passes))
        if len(passes) == 1:
            raise RuntimeError("first pass breaks")
        if len(passes) == 3:
            third.set()

    loop = PeriodicTask("test pass", step, 0.0, log=log)
    loop.start()
    await asyncio.wait_for(third.wait(), 30)
    await loop.close()
    assert "test pass failed" in caplog.text
    count = len(passes)
    await asyncio.sleep(0)
    assert len(passes) == count  # nothing runs after close


async def test_wake_gets_the_computed_interval_and_ends_the_wait() -> None:
    waits: list[float] = []
    poke = asyncio.Event()
    second = asyncio.Event()

    async def wake(timeout: float) -> None:
        waits.append(timeout)
        await poke.wait()  # a notify, long before the hour is over
        poke.clear()

    async def step() -> None:
        if waits:
            second.set()

    loop = PeriodicTask("test pass", step, lambda: 3600.0, log=log, wake=wake)
    loop.start()
    while not waits:
        await asyncio.sleep(0)
    poke.set()
    await asyncio.wait_for(second.wait(), 30)
    await loop.close()
    assert waits[0] == 3600.0


async def test_close_before_start_and_twice_is_fine() -> None:
    async def step() -> None:
        return None

    loop = PeriodicTask("test pass", step, 1.0, log=log)
    await loop.close()
    loop.start()
    await loop.close()
    await loop.close()


async def test_tasks_own_every_task_even_one_replaced_under_its_key() -> None:
    tasks = Tasks()
    first = tasks.spawn("k", asyncio.sleep(60))
    second = tasks.spawn("k", asyncio.sleep(60))
    assert tasks.get("k") is second and "k" in tasks
    await tasks.close()
    assert first.cancelled() and second.cancelled() and "k" not in tasks


async def test_background_jobs_cancel_sets_the_flag_and_waits() -> None:
    jobs, seen = BackgroundJobs(), []

    async def job(cancel: threading.Event) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            seen.append(cancel.is_set())

    jobs.start("saved:x", job)
    await asyncio.sleep(0)
    assert jobs.running("saved:x")
    await jobs.cancel("saved:x")
    assert seen == [True] and not jobs.running("saved:x")
