"""The reaper: deletes instances whose time is up: `expires_at` passed, or `autokill`
(Unikraft Cloud's) elapsed since the VM stopped running (Stopped or Standby).

Both are computed from times kept in the record, so nothing is lost while the
server is down: `reap` runs once at start (before the API answers), then a task
wakes at the next due time, or every `expiry_poll_seconds` at most so a PATCH, a
stop or a standby that brings one closer is seen soon. Deleting goes through the
manager's delete (VMM down, record gone, resources released), forcefully: the
owner asked for the instance to be gone at that time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from ember.errors import EmberError
from ember.instances.core import InstanceCore
from ember.instances.models import InstanceRecord
from ember.tasks import PeriodicTask

log = logging.getLogger("ember.instances")

Delete = Callable[[str], Awaitable[None]]


class Reaper:
    def __init__(self, core: InstanceCore, delete: Delete) -> None:
        self.core, self._delete = core, delete
        self._loop = PeriodicTask("reaper pass", self.reap, self._next_wait, log=log)

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()

    async def reap(self) -> list[str]:
        """Delete every instance whose time is up now; returns their ids."""
        now = datetime.now(UTC)
        expired = [r for r in self.core.repo.all() if (due := due_at(r)) and due <= now]
        for record in expired:
            log.info("instance's time is up, deleting", extra={"instance": record.id})
            self.core.event(record.id, f"{_why(record, now)}: deleting")
            try:
                await self._delete(record.id)
            except EmberError as exc:  # already gone, or a racing delete: fine
                log.info("expired instance not deleted: %s", exc, extra={"instance": record.id})
        return [r.id for r in expired]

    def _next_wait(self) -> float:
        poll = self.core.settings.expiry_poll_seconds
        dues = [due for r in self.core.repo.all() if (due := due_at(r)) is not None]
        if not dues:
            return poll
        until = (min(dues) - datetime.now(UTC)).total_seconds()
        return max(0.0, min(poll, until))


def due_at(record: InstanceRecord) -> datetime | None:
    """When the reaper deletes `record` (None: not while nothing changes)."""
    dues = [record.expires_at] if record.expires_at is not None else []
    stopped = record.stopped_since
    if record.autokill is not None and stopped is not None:
        dues.append(stopped + timedelta(milliseconds=record.autokill.time_ms))
    return min(dues, default=None)


def _why(record: InstanceRecord, now: datetime) -> str:
    if record.expires_at is not None and record.expires_at <= now:
        return f"expired at {record.expires_at}"
    assert record.autokill is not None
    return f"autokill: stopped since {record.stopped_since} ({record.autokill.time_ms} ms)"
