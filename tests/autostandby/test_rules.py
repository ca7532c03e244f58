"""The pure rules of auto-standby: policy validation, what counts as an inbound flow, the
status and its reason, and the parsing of conntrack's output."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ember.errors import InvalidArgument
from ember.instances import policies
from ember.instances.autostandby import Observation, count, evaluate, go_duration
from ember.instances.models import AutoStandbyPolicy, AutoStandbyState, InstanceRecord
from ember.instances.request import AutoStandbyPolicyRequest
from ember.instances.state import State
from ember.network.conntrack import Flow, parse_line

NOW = datetime(2030, 1, 1, tzinfo=UTC)
IP = "10.100.0.5"
POLICY = AutoStandbyPolicy(enabled=True, idle_timeout="1m")


def record(policy: AutoStandbyPolicy | None = POLICY, **fields: Any) -> InstanceRecord:
    base: dict[str, Any] = {
        "id": "i" * 24, "name": "web", "image": "hello", "image_digest": "sha256:0",
        "memory_bytes": 1 << 28, "overlay_bytes": 1 << 30, "state": State.RUNNING,
        "auto_standby": policy,
    }  # fmt: skip
    return InstanceRecord(**{**base, **fields})


def test_policy_validation() -> None:
    policy = policies.auto_standby(
        AutoStandbyPolicyRequest(
            enabled=True, idle_timeout="5m", ignore_source_cidrs=["192.0.2.7/24"],
            ignore_destination_ports=[22],
        )
    )  # fmt: skip
    assert policy == AutoStandbyPolicy(
        enabled=True, idle_timeout="5m", ignore_source_cidrs=["192.0.2.0/24"],
        ignore_destination_ports=[22],
    )  # fmt: skip
    assert policies.auto_standby(AutoStandbyPolicyRequest()) == AutoStandbyPolicy()
    assert policies.auto_standby(None) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"enabled": True}, r"auto_standby\.idle_timeout: required when enabled"),
        ({"idle_timeout": "0s"}, r"auto_standby\.idle_timeout: must be more than 0s"),
        ({"idle_timeout": "soon"}, r"auto_standby\.idle_timeout"),
        ({"ignore_source_cidrs": ["10.0.0.0/40"]}, r"ignore_source_cidrs\[0\]"),
        ({"ignore_destination_ports": [80, 0]}, r"ignore_destination_ports\[1\]"),
    ],
)
def test_policy_refusals(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        policies.auto_standby(AutoStandbyPolicyRequest(**fields))


def test_only_inbound_flows_the_policy_does_not_ignore_count() -> None:
    policy = AutoStandbyPolicy(
        enabled=True, idle_timeout="1m", ignore_source_cidrs=["10.100.0.1/32"],
        ignore_destination_ports=[22],
    )  # fmt: skip
    flows = [
        Flow("192.0.2.1", IP, 40000, 8080, "ESTABLISHED"),  # counts
        Flow("192.0.2.1", IP, 40001, 22, "ESTABLISHED"),  # ignored port
        Flow("10.100.0.1", IP, 40002, 8080, "ESTABLISHED"),  # ignored source
        Flow(IP, "192.0.2.1", 50000, 443, "ESTABLISHED"),  # outbound: the guest opened it
        Flow("192.0.2.1", "10.100.0.6", 40003, 8080, "ESTABLISHED"),  # another guest
    ]
    assert count(flows, IP, policy) == 1


def test_conntrack_lines() -> None:
    event = (
        " [UPDATE] tcp      6 432000 ESTABLISHED src=10.100.0.1 dst=10.100.0.5 sport=33082 "
        "dport=8080 src=10.100.0.5 dst=10.100.0.1 sport=8080 dport=33082 [ASSURED]"
    )
    assert parse_line(event) == Flow("10.100.0.1", "10.100.0.5", 33082, 8080, "ESTABLISHED")
    listed = event.replace(" [UPDATE]", "")
    assert parse_line(listed) == parse_line(event)
    assert parse_line("conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.") is None
    assert parse_line("udp 17 29 src=1.1.1.1 dst=2.2.2.2 sport=1 dport=53") is None


def seen(**fields: Any) -> Observation:
    return Observation(**{"ip": IP, "connections": 0, **fields})


@pytest.mark.parametrize(
    ("inst", "observation", "status", "reason"),
    [
        (record(), seen(supported=False), "unsupported", "unsupported_platform"),
        (record(policy=None), seen(), "disabled", "policy_missing"),
        (record(AutoStandbyPolicy()), seen(), "disabled", "policy_disabled"),
        (record(state=State.STANDBY), seen(), "ineligible", "instance_not_running"),
        (record(), seen(ip=None), "ineligible", "network_disabled"),
        (record(), seen(error="no table"), "error", "observer_error"),
        (record(), seen(connections=2), "active", "active_inbound_connections"),
        (record(), seen(standby_requested=True), "standby_requested", "ready_for_standby"),
    ],
)
def test_status_and_reason(
    inst: InstanceRecord, observation: Observation, status: str, reason: str
) -> None:
    report = evaluate(inst, observation, NOW)
    assert (report.status, report.reason) == (status, reason)
    assert report.eligible is False


def test_countdown_hold_and_ready() -> None:
    idle = record(auto_standby_state=AutoStandbyState(idle_since=NOW - timedelta(seconds=20)))
    report = evaluate(idle, seen(), NOW)
    assert (report.status, report.reason) == ("idle_countdown", "idle_timeout_not_elapsed")
    assert report.eligible and report.countdown_remaining == "40s"
    assert report.next_standby_at == NOW + timedelta(seconds=40)
    ready = evaluate(idle, seen(), NOW + timedelta(seconds=41))
    assert (ready.status, ready.reason) == ("ready_for_standby", "ready_for_standby")
    # A hold pushes the standby to its end, and is reported while it lasts.
    hold = NOW + timedelta(minutes=5)
    idle.auto_standby_state.hold_until = hold
    held = evaluate(idle, seen(), NOW + timedelta(seconds=41))
    assert held.status == "idle_countdown" and held.next_standby_at == hold
    assert held.hold_until == hold
    assert evaluate(idle, seen(), hold + timedelta(seconds=1)).hold_until is None


def test_go_duration() -> None:
    assert [go_duration(s) for s in (0, 0.2, 59, 61, 3725)] == ["0s", "1s", "59s", "1m1s", "1h2m5s"]
