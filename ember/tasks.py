"""Background loops: one task that runs a pass again and again until it is closed.

Every controller of the server (supervisor, health sync, reaper, log rotation,
auto-standby, snapshot scheduler, conntrack follower) has the same life: start in
the running event loop, run a pass, wait (a fixed interval, a computed one, or
less when something worth an early pass happens), and go on whatever one pass
raised, since one bad pass must not end supervision for good. `close()` cancels
the task and waits for it, so nothing of it runs after the server stops.

Why a class holding the task and not a bare `create_task` in each controller: the
start, the error logging and the cancel-and-await were written out seven times,
and a controller that forgot the await in `close()` would leave a pass running
into a closed store.

`BackgroundJobs` is the one-off counterpart: at most one job per key, each
with a cancel flag a worker thread can check, all cancelled by `close()`. Keys
name what a job guards (`saved:<instance id>`, `snapshot:<id>`), so the code
about to touch those files cancels exactly the job that reads them.

`Tasks` owns long-running tasks by key (a VM's monitor, a health probe): each
is kept until it ends, and `close()` cancels and awaits whatever still runs. No
code under ember/instances calls `create_task` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["BackgroundJobs", "Cancelled", "KeyedJobs", "PeriodicTask", "Tasks"]

T = TypeVar("T")

Step = Callable[[], Awaitable[object]]
# Waits at most the given seconds; returns (or raises TimeoutError) when the next
# pass is due. The default, `asyncio.sleep`, never wakes early.
Wake = Callable[[float], Awaitable[object]]


class PeriodicTask:
    """Runs `step`, then waits `interval` seconds (a number, or computed after every
    pass) through `wake`, over and over. An exception of a pass is logged on `log`
    as "`what` failed" and the loop goes on."""

    def __init__(
        self,
        what: str,
        step: Step,
        interval: float | Callable[[], float],
        *,
        log: logging.Logger,
        wake: Wake = asyncio.sleep,
    ) -> None:
        self.what, self._step, self._interval = what, step, interval
        self._log, self._wake = log, wake
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _next_wait(self) -> float:
        return self._interval() if callable(self._interval) else self._interval

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except Exception:
                self._log.exception("%s failed", self.what)
            with contextlib.suppress(TimeoutError):
                await self._wake(self._next_wait())


class Cancelled(Exception):
    """A job was stopped through its cancel flag."""


class BackgroundJobs:
    """At most one background job per key, each with a cancel flag its worker thread
    checks. A job that ends by raising `Cancelled` (or CancelledError) was stopped."""

    def __init__(self) -> None:
        self._tasks: dict[str, tuple[asyncio.Task[None], threading.Event]] = {}

    def start(
        self, key: str, job: Callable[[threading.Event], Coroutine[object, object, None]]
    ) -> None:
        cancel = threading.Event()
        task = asyncio.get_running_loop().create_task(job(cancel))
        self._tasks[key] = (task, cancel)

        def forget(_: asyncio.Task[None]) -> None:
            if self._tasks.get(key, (None,))[0] is task:
                del self._tasks[key]

        task.add_done_callback(forget)

    def running(self, key: str) -> bool:
        return key in self._tasks

    async def cancel(self, key: str) -> None:
        """Stop the job of `key` and wait until it has let go of its files."""
        entry = self._tasks.get(key)
        if entry is None:
            return
        task, flag = entry
        flag.set()
        task.cancel()  # a job still in its delay stops there
        with contextlib.suppress(asyncio.CancelledError, Cancelled):
            await task

    async def wait(self, key: str) -> None:
        entry = self._tasks.get(key)
        if entry is not None:
            with contextlib.suppress(asyncio.CancelledError, Cancelled):
                await entry[0]

    async def close(self) -> None:
        for key in list(self._tasks):
            await self.cancel(key)


class Tasks:
    """Tasks by key, owned until they end; `close()` cancels and awaits every one."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._all: set[asyncio.Task[None]] = set()  # a replaced task is still owned

    def spawn(self, key: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` as the task of `key` (an earlier one under the key stays owned
        until it ends)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks[key] = task
        self._all.add(task)

        def forget(_: asyncio.Task[None]) -> None:
            self._all.discard(task)
            if self._tasks.get(key) is task:
                del self._tasks[key]

        task.add_done_callback(forget)
        return task

    def get(self, key: str) -> asyncio.Task[None] | None:
        return self._tasks.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._tasks))

    def cancel(self, key: str) -> None:
        """Cancel the task of `key` without waiting for it."""
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._all)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


class KeyedJobs(Generic[T]):
    """At most one running job per key, owned, that callers *join*: a second `run` of a
    key awaits the job already running (a burst of wake requests costs one restore), and
    `close()` cancels and awaits them all. A job's failure reaches every joiner. (Unlike
    `Tasks`, where a new task under a key replaces the old.)"""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[T]] = {}

    def running(self, key: str) -> bool:
        return key in self._tasks

    async def run(self, key: str, job: Callable[[], Awaitable[T]]) -> T:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(_awaited(job))
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        # A joiner that gives up (its client went away) must not cancel the others' job.
        return await asyncio.shield(task)

    def _forget(self, key: str, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody awaited is not logged as lost

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


async def _awaited(job: Callable[[], Awaitable[T]]) -> T:
    return await job()
