"""The supervisor: restarts instances per their `restart_policy`.

Level-triggered, from what the record says, so it needs no hook in the
operations and survives a server restart: every boot that ended (the record
is Stopped and its `started_at` is not yet `restart_status.decided_boot`) is
decided once, and a decided restart is a `next_attempt_at` in the record that
the loop carries out when it is due. The loop wakes on every state change and
at the next due attempt (at most `supervisor_poll_seconds` apart).

- `always` restarts after any end, `on_failure` after a nonzero or unknown
  exit (crash, VMM died) or a failing health check (`health.py` marks the boot
  it stopped in `health_failed_boot`); `never` never.
- A manual stop sets `blocked_reason: manual_stop` before the VM goes down
  (`stop.py`), so it is never undone, even by a server restarted in between;
  a manual start clears the status.
- Each restart is counted; past `max_attempts` (0: unlimited) the instance
  stays Stopped with `blocked_reason: max_attempts_exceeded`. A boot that ran
  at least `stable_after` resets the count first.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime, timedelta

from ember.errors import EmberError, NotFound
from ember.instances import start
from ember.instances.core import InstanceCore
from ember.instances.models import InstanceRecord, RestartPolicy, RestartStatus
from ember.instances.state import State
from ember.tasks import PeriodicTask
from ember.units import parse_duration

log = logging.getLogger("ember.instances")


def undecided(record: InstanceRecord) -> bool:
    """A boot of a supervised instance ended and nobody decided about it yet."""
    return (
        record.state == State.STOPPED
        and record.restart_policy is not None
        and record.started_at is not None
        and record.restart_status.decided_boot != record.started_at
    )


def due(record: InstanceRecord, now: datetime) -> bool:
    status = record.restart_status
    return (
        record.state == State.STOPPED
        and status.blocked_reason is None
        and status.next_attempt_at is not None
        and status.next_attempt_at <= now
    )


def decide(record: InstanceRecord, now: datetime) -> RestartStatus:
    """What the policy says about the boot of `record` that just ended (pure)."""
    policy = record.restart_policy or RestartPolicy()
    status = record.restart_status.model_copy(update={"decided_boot": record.started_at})
    status.next_attempt_at = None
    if status.blocked_reason == "manual_stop":
        return status
    health_failed = status.health_failed_boot is not None and (
        status.health_failed_boot == record.started_at
    )
    if health_failed:
        status.last_reason = "health_check_failed"
    failed = health_failed or record.exit_code != 0
    if policy.policy == "never" or (policy.policy == "on_failure" and not failed):
        return status
    if policy.stable_after and record.started_at and record.stopped_at:
        ran = (record.stopped_at - record.started_at).total_seconds()
        if ran >= parse_duration(policy.stable_after, field="stable_after"):
            status.attempts = 0
    if policy.max_attempts and status.attempts >= policy.max_attempts:
        status.blocked_reason = "max_attempts_exceeded"
        return status
    status.blocked_reason = None
    backoff = parse_duration(policy.backoff, field="backoff")
    status.next_attempt_at = now + timedelta(seconds=backoff)
    return status


class Supervisor:
    def __init__(self, core: InstanceCore) -> None:
        self.core = core
        self._loop = PeriodicTask(
            "supervisor pass", self.run_once, self._next_wait, log=log,
            wake=lambda timeout: core.changes.wait_for(self._work_waiting, timeout),
        )  # fmt: skip

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()

    def _set(self, instance_id: str, **fields: object) -> InstanceRecord:
        def change(record: InstanceRecord) -> None:
            record.restart_status = record.restart_status.model_copy(update=fields)

        return self.core.update(instance_id, change)

    # ---- the loop ------------------------------------------------------------------

    async def run_once(self) -> None:
        """Decide every boot that ended, then carry out the restarts that are due."""
        for record in self.core.repo.all():
            if undecided(record):
                self._decide(record.id)
        for record in self.core.repo.all():
            if due(record, datetime.now(UTC)):
                with contextlib.suppress(NotFound):  # deleted meanwhile
                    await self._restart(record.id)

    def _work_waiting(self) -> bool:
        now = datetime.now(UTC)
        return any(undecided(r) or due(r, now) for r in self.core.repo.all())

    def _next_wait(self) -> float:
        wait = self.core.settings.supervisor_poll_seconds
        now = datetime.now(UTC)
        for record in self.core.repo.all():
            when = record.restart_status.next_attempt_at
            if when is not None and record.restart_status.blocked_reason is None:
                wait = min(wait, max(0.0, (when - now).total_seconds()))
        return wait

    def _decide(self, instance_id: str) -> None:
        decided: list[RestartStatus] = []

        def change(record: InstanceRecord) -> None:
            if undecided(record):  # checked again inside the update: no double decision
                record.restart_status = decide(record, datetime.now(UTC))
                decided.append(record.restart_status)

        self.core.update(instance_id, change)
        if decided:
            self.core.event(instance_id, f"supervisor: {_describe(decided[0])}")

    async def _restart(self, instance_id: str) -> None:
        core = self.core
        now = datetime.now(UTC)
        record = self._set(instance_id, next_attempt_at=None, last_attempt_at=now)
        attempts = record.restart_status.attempts + 1
        record = self._set(instance_id, attempts=attempts)
        core.event(instance_id, f"supervisor: restart attempt {attempts}")
        try:
            await start.start(core, instance_id, by_owner=False)
        except EmberError as exc:
            # Not booted (no room now, image gone, ...): counts as an attempt; try again
            # after the backoff unless the attempts are used up.
            core.event(instance_id, f"supervisor: restart attempt {attempts} failed: {exc}")
            self._retry_later(instance_id)

    def _retry_later(self, instance_id: str) -> None:
        def change(record: InstanceRecord) -> None:
            policy, status = record.restart_policy, record.restart_status
            if record.state != State.STOPPED or policy is None or status.blocked_reason:
                return
            if policy.max_attempts and status.attempts >= policy.max_attempts:
                status.blocked_reason = "max_attempts_exceeded"
                return
            backoff = parse_duration(policy.backoff, field="backoff")
            status.next_attempt_at = datetime.now(UTC) + timedelta(seconds=backoff)

        with contextlib.suppress(EmberError):
            self.core.update(instance_id, change)


def _describe(status: RestartStatus) -> str:
    if status.blocked_reason:
        return f"no restart ({status.blocked_reason}, {status.attempts} attempts)"
    if status.next_attempt_at is not None:
        return f"restart at {status.next_attempt_at.isoformat()} (after {status.attempts})"
    return "no restart (policy)"
