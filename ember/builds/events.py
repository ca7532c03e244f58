"""A build's event log: JSON lines on disk, replayable from the start, followed live.

Every event (log line, status change) is appended to `<builds>/<id>/events.jsonl` and
wakes the build's followers. A subscriber reads the file from the top, then waits for
more until the build reaches a terminal status: a late subscriber sees everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

from ember.builds.models import TERMINAL, BuildEvent, BuildStatus

__all__ = ["EventLog"]


class EventLog:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._changed: dict[str, asyncio.Condition] = {}
        self._appended: dict[str, int] = {}  # events appended per build while the server ran

    def path(self, build_id: str) -> Path:
        return self.root / build_id / "events.jsonl"

    def _condition(self, build_id: str) -> asyncio.Condition:
        return self._changed.setdefault(build_id, asyncio.Condition())

    async def append(self, build_id: str, event: BuildEvent) -> None:
        path = self.path(build_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(event.model_dump_json(exclude_none=True) + "\n")
        condition = self._condition(build_id)
        async with condition:
            self._appended[build_id] = self._appended.get(build_id, 0) + 1
            condition.notify_all()

    async def log(self, build_id: str, line: str) -> None:
        await self.append(build_id, BuildEvent(type="log", content=line))

    async def status(self, build_id: str, status: BuildStatus) -> None:
        await self.append(build_id, BuildEvent(type="status", status=status))

    def _newer(self, build_id: str, mark: int) -> bool:
        return self._appended.get(build_id, 0) > mark

    def read(self, build_id: str) -> list[BuildEvent]:
        path = self.path(build_id)
        if not path.exists():
            return []
        return [BuildEvent.model_validate_json(line) for line in path.read_text().splitlines()]

    async def follow(
        self, build_id: str, *, follow: bool, heartbeat: float = 30.0
    ) -> AsyncIterator[BuildEvent]:
        """Every event so far; with `follow`, then each new one until a terminal status
        (a heartbeat every `heartbeat` s while nothing happens)."""
        seen = 0
        condition = self._condition(build_id)
        while True:
            mark = self._appended.get(build_id, 0)  # read before the file: no wake-up is lost
            events = self.read(build_id)
            for event in events[seen:]:
                yield event
            seen = len(events)
            if not follow or any(e.status in TERMINAL for e in events if e.type == "status"):
                return
            async with condition:
                try:
                    await asyncio.wait_for(
                        condition.wait_for(partial(self._newer, build_id, mark)), heartbeat
                    )
                except TimeoutError:
                    yield BuildEvent(type="heartbeat")

    def forget(self, build_id: str) -> None:
        self._changed.pop(build_id, None)
        self._appended.pop(build_id, None)
