"""What the owner's own commands do to supervision (record edits, applied by the
operation itself inside its record update; `supervisor.py` decides the rest)."""

from __future__ import annotations

from ember.instances.models import InstanceRecord

__all__ = ["owner_started", "owner_stopped", "policy_replaced", "restart_pending"]


def restart_pending(record: InstanceRecord) -> bool:
    """A restart is scheduled (a stop then cancels it)."""
    status = record.restart_status
    return status.next_attempt_at is not None and status.blocked_reason is None


def owner_started(record: InstanceRecord) -> None:
    """The owner started it: supervision starts over."""
    status = record.restart_status
    status.attempts, status.blocked_reason, status.next_attempt_at = 0, None, None


def owner_stopped(record: InstanceRecord) -> None:
    """The owner stopped it (or cancelled a pending restart): never undone by a restart."""
    record.restart_status.blocked_reason = "manual_stop"
    record.restart_status.next_attempt_at = None


def policy_replaced(record: InstanceRecord) -> None:
    """A PATCH replaced the policy: a restart it no longer allows is dropped, and a count
    it now allows unblocks."""
    policy, status = record.restart_policy, record.restart_status
    if policy is None or policy.policy == "never":
        status.next_attempt_at = None
    if status.blocked_reason == "max_attempts_exceeded" and (
        policy is None or not policy.max_attempts or status.attempts < policy.max_attempts
    ):
        status.blocked_reason = None
        status.decided_boot = None  # decide the last end again, under the new policy
