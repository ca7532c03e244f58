"""Pure validation of the policy fields a create and a PATCH share: expiry (`ttl` /
`expires_at`), `autokill`, `restart_policy` and `health_check`.

Each turns the request's shape into the stored one (defaults filled in, durations
checked) or raises InvalidArgument naming the field, before anything changes.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Literal

from ember.errors import InvalidArgument
from ember.instances.models import (
    Autokill,
    AutoStandbyPolicy,
    HealthCheck,
    HealthCheckExec,
    HealthCheckHTTP,
    HealthCheckTCP,
    RestartPolicy,
    SnapshotPolicy,
)
from ember.instances.request import (
    AutokillRequest,
    AutoStandbyPolicyRequest,
    HealthCheckRequest,
    RestartPolicyRequest,
)
from ember.units import parse_duration

ProbeKind = Literal["http", "tcp", "exec"]


def duration(value: str, field: str, *, positive: bool = False) -> float:
    """A Go duration in seconds; negative (or, if `positive`, zero) is refused."""
    seconds = parse_duration(value, field=field)
    if seconds < 0 or (positive and seconds == 0):
        raise InvalidArgument(f"{field}: must be {'more than' if positive else 'at least'} 0s")
    return seconds


def autokill(request: AutokillRequest | None) -> Autokill | None:
    """The stored autokill; None (never) for no request or `time_ms` 0."""
    if request is None:
        return None
    if request.num_requests:
        raise InvalidArgument(
            "autokill.num_requests: deleting an instance after a number of requests is not "
            "available (Caddy counts requests in flight, not served); give 0",
            code="not_supported",
        )
    if request.time_ms < 0:
        raise InvalidArgument("autokill.time_ms: must be at least 0", code="invalid_time")
    return Autokill(time_ms=request.time_ms) if request.time_ms else None


def expiry(ttl: str | None, expires_at: datetime | None, now: datetime) -> datetime | None:
    """The absolute expiry the request asks for; None: none. `ttl` counts from `now`;
    "0s" means no expiry. A naive `expires_at` is taken as UTC."""
    if ttl is not None and expires_at is not None:
        raise InvalidArgument("ttl, expires_at: give one or the other, not both")
    if ttl is not None:
        seconds = duration(ttl, "ttl")
        try:
            return now + timedelta(seconds=seconds) if seconds else None
        except OverflowError:  # past what a datetime holds
            raise InvalidArgument(f"ttl: {ttl!r} reaches beyond the year 9999") from None
    if expires_at is None:
        return None
    when = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
    if when <= now:
        raise InvalidArgument(f"expires_at: {when.isoformat()} is not in the future")
    return when


def restart_policy(request: RestartPolicyRequest | None) -> RestartPolicy | None:
    if request is None:
        return None
    policy = RestartPolicy(policy=request.policy)
    if request.backoff is not None:
        duration(request.backoff, "restart_policy.backoff")
        policy.backoff = request.backoff
    if request.max_attempts is not None:
        if request.max_attempts < 0:
            raise InvalidArgument("restart_policy.max_attempts: must be 0 (unlimited) or more")
        policy.max_attempts = request.max_attempts
    if request.stable_after is not None:
        duration(request.stable_after, "restart_policy.stable_after")
        policy.stable_after = request.stable_after
    return policy


def health_check(request: HealthCheckRequest | None, *, networked: bool) -> HealthCheck | None:
    """`networked`: the instance has a network address (http and tcp probes need one)."""
    if request is None or request.type == "none":
        return None
    kinds: tuple[ProbeKind, ...] = ("http", "tcp", "exec")
    given = [name for name in kinds if getattr(request, name) is not None]
    kind = request.type
    if kind is None:
        if len(given) != 1:
            raise InvalidArgument("health_check.type: give the type (http, tcp or exec)")
        kind = given[0]
    if given != [kind]:
        raise InvalidArgument(
            f"health_check.{kind}: required with type {kind!r}, and only that probe"
        )
    if kind in ("http", "tcp") and not networked:
        raise InvalidArgument(
            f"health_check.{kind}: probes the instance's network address, and this instance "
            "has none (networking is off on this server, or network.enabled is false); "
            "use an exec health check"
        )
    check = HealthCheck(type=kind)
    if request.http is not None:
        check.http = HealthCheckHTTP(port=_port(request.http.port, "http"))
        if request.http.path is not None:
            if not request.http.path.startswith("/"):
                raise InvalidArgument("health_check.http.path: must start with /")
            check.http.path = request.http.path
        if request.http.expected_status is not None:
            if not 100 <= request.http.expected_status <= 599:
                raise InvalidArgument("health_check.http.expected_status: 100 to 599")
            check.http.expected_status = request.http.expected_status
        check.http.scheme = request.http.scheme or "http"
    if request.tcp is not None:
        check.tcp = HealthCheckTCP(port=_port(request.tcp.port, "tcp"))
    if request.exec is not None:
        if not request.exec.command:
            raise InvalidArgument("health_check.exec.command: must not be empty")
        check.exec = HealthCheckExec(
            command=request.exec.command, working_dir=request.exec.working_dir
        )
    for name in ("interval", "timeout", "start_period"):
        value = getattr(request, name)
        if value is not None:
            duration(value, f"health_check.{name}", positive=name != "start_period")
            setattr(check, name, value)
    for name in ("failure_threshold", "success_threshold"):
        value = getattr(request, name)
        if value is not None:
            if value < 1:
                raise InvalidArgument(f"health_check.{name}: at least 1")
            setattr(check, name, value)
    return check


def _port(port: int, kind: str) -> int:
    if not 1 <= port <= 65535:
        raise InvalidArgument(f"health_check.{kind}.port: {port} is not a port (1 to 65535)")
    return port


def snapshot_policy(policy: SnapshotPolicy | None) -> SnapshotPolicy | None:
    """Checked as a standby would use it: compression levels and the delay's duration."""
    if policy is None:
        return None
    if policy.compression is not None:
        policy.compression.resolve("snapshot_policy.compression")
    if policy.standby_compression_delay is not None:
        duration(policy.standby_compression_delay, "snapshot_policy.standby_compression_delay")
    return policy


def auto_standby(request: AutoStandbyPolicyRequest | None) -> AutoStandbyPolicy | None:
    """`idle_timeout` is required when enabled (no silent default); CIDRs are normalised.
    An instance without a network is accepted: its status says `network_disabled`."""
    if request is None:
        return None
    policy = AutoStandbyPolicy(enabled=request.enabled)
    if request.idle_timeout is not None:
        duration(request.idle_timeout, "auto_standby.idle_timeout", positive=True)
        policy.idle_timeout = request.idle_timeout
    elif request.enabled:
        raise InvalidArgument('auto_standby.idle_timeout: required when enabled (e.g. "5m")')
    for index, cidr in enumerate(request.ignore_source_cidrs or ()):
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise InvalidArgument(
                f"auto_standby.ignore_source_cidrs[{index}]: {cidr!r} is not a CIDR "
                '(e.g. "10.0.0.0/8" or "192.0.2.7/32")'
            ) from None
        policy.ignore_source_cidrs.append(str(network))
    for index, port in enumerate(request.ignore_destination_ports or ()):
        if not 1 <= port <= 65535:
            raise InvalidArgument(
                f"auto_standby.ignore_destination_ports[{index}]: {port} is not a port (1 to 65535)"
            )
        policy.ignore_destination_ports.append(port)
    return policy
