"""The pure rules of supervision: policy validation, restart decisions, phases, log caps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ember.errors import InvalidArgument
from ember.instances import policies
from ember.instances.logs import _tail, rotate, rotated
from ember.instances.models import InstanceRecord, RestartPolicy, RestartStatus
from ember.instances.phases import describe
from ember.instances.request import HealthCheckRequest, RestartPolicyRequest
from ember.instances.state import State
from ember.instances.supervisor import decide, due, undecided

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_expiry_rules() -> None:
    assert policies.expiry("90s", None, NOW) == NOW + timedelta(seconds=90)
    assert policies.expiry("0s", None, NOW) is None
    assert policies.expiry(None, None, NOW) is None
    later = NOW + timedelta(hours=1)
    assert policies.expiry(None, later.replace(tzinfo=None), NOW) == later  # naive: UTC
    with pytest.raises(InvalidArgument, match="ttl, expires_at"):
        policies.expiry("1h", later, NOW)
    with pytest.raises(InvalidArgument, match=r"expires_at: .* not in the future"):
        policies.expiry(None, NOW - timedelta(seconds=1), NOW)
    with pytest.raises(InvalidArgument, match="ttl: invalid duration"):
        policies.expiry("soon", None, NOW)
    for too_far in ("99999999999h", "9999999999999999999999s", "70000000h"):  # PATCH too
        with pytest.raises(InvalidArgument, match=r"ttl: .* beyond the year 9999"):
            policies.expiry(too_far, None, NOW)


def test_restart_policy_defaults_and_refusals() -> None:
    policy = policies.restart_policy(RestartPolicyRequest(policy="on_failure"))
    assert policy == RestartPolicy(policy="on_failure", backoff="5s", max_attempts=0)
    with pytest.raises(InvalidArgument, match=r"restart_policy\.backoff"):
        policies.restart_policy(RestartPolicyRequest(backoff="later"))
    with pytest.raises(InvalidArgument, match=r"restart_policy\.max_attempts"):
        policies.restart_policy(RestartPolicyRequest(max_attempts=-1))


@pytest.mark.parametrize(
    ("fields", "networked", "message"),
    [
        ({"type": "http", "http": {"port": 80}}, False, "health_check.http: probes"),
        ({"type": "tcp"}, True, "health_check.tcp: required"),
        ({"http": {"port": 80}, "tcp": {"port": 1}}, True, "health_check.type"),
        ({"tcp": {"port": 70000}}, True, "health_check.tcp.port"),
        ({"http": {"port": 80, "path": "x"}}, True, "health_check.http.path"),
        ({"exec": {"command": []}}, True, "health_check.exec.command"),
        ({"exec": {"command": ["true"]}, "interval": "0s"}, True, "health_check.interval"),
        ({"exec": {"command": ["true"]}, "failure_threshold": 0}, True, "failure_threshold"),
    ],
)
def test_health_check_refusals(fields: dict[str, Any], networked: bool, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        policies.health_check(HealthCheckRequest.model_validate(fields), networked=networked)


def test_health_check_defaults() -> None:
    check = policies.health_check(
        HealthCheckRequest.model_validate({"http": {"port": 8080}}), networked=True
    )
    assert check is not None and check.type == "http" and check.http is not None
    assert (check.http.path, check.http.scheme, check.interval) == ("/", "http", "10s")
    assert policies.health_check(HealthCheckRequest(type="none"), networked=False) is None


def stopped(exit_code: int | None, policy: RestartPolicy, **status: Any) -> InstanceRecord:
    started = NOW - timedelta(seconds=10)
    return InstanceRecord(
        id="i" * 24, name="web", image="x", image_digest="sha256:x", memory_bytes=1,
        overlay_bytes=1, state=State.STOPPED, started_at=started, stopped_at=NOW,
        exit_code=exit_code, restart_policy=policy, restart_status=RestartStatus(**status),
    )  # fmt: skip


def test_restart_decisions() -> None:
    on_failure = RestartPolicy(policy="on_failure", backoff="2s", max_attempts=2)
    crashed = stopped(3, on_failure)
    assert undecided(crashed)
    status = decide(crashed, NOW)
    assert status.next_attempt_at == NOW + timedelta(seconds=2) and status.blocked_reason is None
    assert status.decided_boot == crashed.started_at
    assert not due(crashed.model_copy(update={"restart_status": status}), NOW)
    assert due(crashed.model_copy(update={"restart_status": status}), NOW + timedelta(seconds=2))
    # A clean exit is not a failure; under `always` it restarts anyway.
    assert decide(stopped(0, on_failure), NOW).next_attempt_at is None
    assert decide(stopped(0, RestartPolicy(policy="always")), NOW).next_attempt_at is not None
    # An unknown end (VMM died) is a failure.
    assert decide(stopped(None, on_failure), NOW).next_attempt_at is not None
    # Attempts used up; a manual stop is never undone.
    blocked = decide(stopped(1, on_failure, attempts=2), NOW)
    assert (blocked.blocked_reason, blocked.next_attempt_at) == ("max_attempts_exceeded", None)
    manual = decide(stopped(1, on_failure, blocked_reason="manual_stop"), NOW)
    assert (manual.blocked_reason, manual.next_attempt_at) == ("manual_stop", None)
    # A boot that ran `stable_after` resets the count.
    stable = RestartPolicy(policy="on_failure", max_attempts=2, stable_after="5s")
    assert decide(stopped(1, stable, attempts=2), NOW).next_attempt_at is not None
    # A health check that brought the boot down is a failure whatever the exit code.
    record = stopped(0, on_failure)
    record.restart_status.health_failed_boot = record.started_at
    health = decide(record, NOW)
    assert health.last_reason == "health_check_failed" and health.next_attempt_at is not None


def test_phases_of_a_stopped_instance() -> None:
    record = stopped(0, RestartPolicy())
    phase, since, durations = describe(record)
    assert (phase, since, durations) == ("stopped", NOW, {})


def test_log_rotation_keeps_the_tail(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert not rotate(log, 10_000)
    assert rotate(log, 100)
    assert log.stat().st_size == 0 and rotated(log).exists()
    with log.open("a") as out:
        out.write("line 100\n")
    lines, offset = _tail(log, 3)
    assert lines == ["line 98", "line 99", "line 100"] and offset == len("line 100\n")
