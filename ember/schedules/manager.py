"""`ScheduleManager`: the calendar schedules of instances and the loop that runs them.

The same shape as the snapshot scheduler (`ember/snapshots/schedule.py`): one
`PeriodicTask` pass every `TICK_SECONDS` runs what is due, and each schedule's next
run is stored with it, so a restarted server goes on where it stopped (a run missed
while it was down happens at its first pass, once, then the calendar goes on from
now). The actions are the instance manager's own commands (a stop is the user's: a
schedule is what the user asked for, so a scale-to-zero never wakes it); `exec` runs
through the guest agent and records the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ember.errors import EmberError, InvalidArgument, NotFound
from ember.images.models import utcnow
from ember.instances import InstanceManager
from ember.schedules import calendar
from ember.schedules.models import InstanceSchedules, Schedule, ScheduleRequest
from ember.store import Repository, Store
from ember.tasks import PeriodicTask
from ember.validation import validate_name

log = logging.getLogger("ember.schedules")
TICK_SECONDS = 1.0
MAX_SCHEDULES = 16
EXEC_TIMEOUT_SECONDS = 300.0
AGENT_WAIT_SECONDS = 60.0  # a schedule right after a boot finds the agent still coming up


class ScheduleManager:
    def __init__(self, store: Store, instances: InstanceManager) -> None:
        self.instances = instances
        self.repo = Repository(store, "instance_schedules", InstanceSchedules, "schedules")
        self._loop = PeriodicTask("schedules pass", self.run_due, TICK_SECONDS, log=log)

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()

    def of(self, instance_id: str) -> list[Schedule]:
        record = self.repo.get(instance_id)
        return record.schedules if record is not None else []

    async def check(self, requests: list[ScheduleRequest]) -> list[Schedule]:
        """The schedules asked for, validated, each with its next run; InvalidArgument
        naming the schedule."""
        if len(requests) > MAX_SCHEDULES:
            raise InvalidArgument(f"schedules: at most {MAX_SCHEDULES}", code="invalid_schedule")
        names = [validate_name(r.name, field="schedules.name") for r in requests]
        if len(set(names)) != len(names):
            raise InvalidArgument("schedules: names must be unique", code="invalid_schedule")
        out = []
        now = utcnow()
        for request in requests:
            field = f"schedules[{request.name}].when"
            parsed = await calendar.parse(request.when, now, field=field)
            if request.action == "exec" and not request.args:
                raise InvalidArgument(
                    f"schedules[{request.name}].args: an exec needs the command",
                    code="invalid_schedule",
                )
            args = (request.args or []) if request.action == "exec" else []
            out.append(Schedule(name=request.name, when=parsed.normalized, action=request.action,
                                args=args, next_at=parsed.next_at))  # fmt: skip
        return out

    def put(self, instance_id: str, schedules: list[Schedule]) -> None:
        """Replace an instance's schedules (checked by `check`); none: delete them."""
        self.repo.delete(instance_id)
        if schedules:
            self.repo.insert(
                InstanceSchedules(id=instance_id, name=instance_id, schedules=schedules)
            )

    async def run_due(self) -> None:
        for record in self.repo.all():
            try:
                self.instances.get(record.id)
            except NotFound:  # deleted with its instance
                self.repo.delete(record.id)
                continue
            for schedule in record.schedules:
                if schedule.next_at is not None and schedule.next_at <= utcnow():
                    await self.run(record.id, schedule)

    async def run(self, instance_id: str, schedule: Schedule) -> None:
        started = utcnow()
        try:
            result = await self._act(instance_id, schedule)
        except EmberError as exc:
            result = exc.message
        except Exception as exc:
            log.exception("schedule %s of %s failed", schedule.name, instance_id)
            result = str(exc)
        log.info("schedule %s (%s) of %s: %s", schedule.name, schedule.action, instance_id,
                 result)  # fmt: skip
        following = (await calendar.parse(schedule.when, utcnow())).next_at

        def done(record: InstanceSchedules) -> None:
            for each in record.schedules:
                if each.name == schedule.name and each.when == schedule.when:
                    each.last_at, each.last_result, each.next_at = started, result, following

        with contextlib.suppress(NotFound):  # the instance's schedules went meanwhile
            self.repo.update(instance_id, done)

    async def _act(self, instance_id: str, schedule: Schedule) -> str:
        if schedule.action == "start":
            await self.instances.start(instance_id)
        elif schedule.action == "stop":
            await self.instances.stop(instance_id)
        elif schedule.action == "standby":
            await self.instances.standby(instance_id)
        elif schedule.action == "delete":  # its schedules go at the next pass
            await self.instances.delete(instance_id, graceful=True)
        else:
            return await self._exec(instance_id, schedule.args)
        return "ok"

    async def _exec(self, instance_id: str, args: list[str]) -> str:
        """Run `args` in the guest; a guest still booting is waited for, as the exec API's
        `wait_for_agent` does."""
        _, agent = await self.instances.wait_for_agent(instance_id, AGENT_WAIT_SECONDS)
        session = await agent.exec(args, timeout=AGENT_WAIT_SECONDS)
        if session.result is None:
            result, _, _ = await asyncio.wait_for(session.wait(), EXEC_TIMEOUT_SECONDS)
        else:
            result = session.result
        return f"exit {result.exit_code}"


__all__ = ["ScheduleManager"]
