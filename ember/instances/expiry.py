"""The reaper: deletes instances whose `expires_at` has passed.

The expiry is an absolute time kept in the record, so nothing is lost while the
server is down: `reap` runs once at start (before the API answers), then a task
wakes at the next expiry, or every `expiry_poll_seconds` at most so a PATCH that
brings an expiry closer is seen soon. Deleting goes through the manager's
delete (VMM down, record gone, resources released), forcefully: the owner asked
for the instance to be gone at that time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from ember.errors import EmberError
from ember.instances.core import InstanceCore
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
        """Delete every expired instance now; returns their ids."""
        now = datetime.now(UTC)
        expired = [r for r in self.core.repo.all() if r.expires_at and r.expires_at <= now]
        for record in expired:
            log.info("instance expired, deleting", extra={"instance": record.id})
            self.core.event(record.id, f"expired at {record.expires_at}: deleting")
            try:
                await self._delete(record.id)
            except EmberError as exc:  # already gone, or a racing delete: fine
                log.info("expired instance not deleted: %s", exc, extra={"instance": record.id})
        return [r.id for r in expired]

    def _next_wait(self) -> float:
        poll = self.core.settings.expiry_poll_seconds
        expiries = [r.expires_at for r in self.core.repo.all() if r.expires_at is not None]
        if not expiries:
            return poll
        until = (min(expiries) - datetime.now(UTC)).total_seconds()
        return max(0.0, min(poll, until))
