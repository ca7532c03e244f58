"""Ember's domain records in the seed's shapes, and the seed's words in Ember's.

Field for field and explicit, so a renamed field is a type error, not a silent gap.
`uuid` is Ember's id (a 24-character CUID2: the SDK treats uuids as opaque
strings), so an instance seen through `/instances` and `/v1/instances` is one
instance under one identifier.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from ember.errors import InvalidArgument, NotFound
from ember.groups.autoscale.models import AutoscalePolicy, AutoscaleRecord
from ember.groups.manager import Member
from ember.groups.models import MemberRecord, ServiceGroupRecord
from ember.instances import InstanceRecord, State
from ember.network.leases import Lease
from ember.schedules.models import Schedule
from ember.snapshots.models import SnapshotRecord
from ember.volumes.models import Attachment, VolumeRecord, VolumeStatus

JSON = dict[str, Any]
MB = 1024 * 1024


class Named(Protocol):
    """What a `/v1` reference picks: a stored record, or a template (a snapshot)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str | None: ...


R = TypeVar("R", bound=Named)

# Lower-case states of the seed. Ember's Created/Initializing are a boot under way,
# Shutdown a stop under way; Paused (a VMM frozen in memory) is what standby means
# to a caller (not running, resumes with its memory); Unknown (the VMM's fate is
# unknown) is reported stopped, with Ember's `state_error` as the item's message.
STATES: dict[State, str] = {
    State.CREATED: "starting",
    State.INITIALIZING: "starting",
    State.RUNNING: "running",
    State.PAUSED: "standby",
    State.SHUTDOWN: "stopping",
    State.STOPPED: "stopped",
    State.STANDBY: "standby",
    State.UNKNOWN: "stopped",
}
# What a wait can wait for: the settled states Ember's `wait` knows.
WAITABLE: dict[str, State] = {
    "running": State.RUNNING,
    "stopped": State.STOPPED,
    "standby": State.STANDBY,
}
RESTART_POLICIES = {"never": "never", "always": "always", "on_failure": "on-failure"}


def iso(moment: datetime | None) -> str | None:
    """Strict ISO 8601 with an offset (the SDK parses `created_at` as a datetime)."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def tags_out(tags: dict[str, str]) -> list[str]:
    """Ember's `{key: value}` as the seed's list: `key=value`, or `key` for an empty value."""
    return [f"{key}={value}" if value else key for key, value in tags.items()]


def tags_in(tags: list[str] | None) -> dict[str, str]:
    """The inverse of `tags_out` (split at the first `=`); Ember validates the parts."""
    out: dict[str, str] = {}
    for tag in tags or []:
        if not isinstance(tag, str) or not tag:
            raise InvalidArgument(f"tags: every tag is a non-empty string, got {tag!r}")
        key, _, value = tag.partition("=")
        out[key] = value
    return out


def pick(ref: JSON, get: Callable[[str], R], kind: str) -> R:
    """The record an item names by exactly one of `uuid` (Ember's id) or `name`; both
    must match exactly (Ember's own lookups also take id prefixes: not here)."""
    uuid, name = ref.get("uuid"), ref.get("name")
    given = uuid if name is None else name
    if (uuid is None) == (name is None) or not isinstance(given, str):
        raise InvalidArgument(f"{kind}: give exactly one of uuid or name", code="invalid_reference")
    record = get(given)
    if (uuid is not None and record.id != uuid) or (name is not None and record.name != name):
        raise NotFound(f"{kind} {given!r} not found")
    return record


def instance(
    record: InstanceRecord,
    lease: Lease | None,
    attachments: list[Attachment],
    membership: tuple[ServiceGroupRecord, MemberRecord] | None,
    schedules: list[Schedule],
    *,
    details: bool = True,
) -> JSON:
    """The seed's `Instance`; without `details`, what a listing shows (uuid and name)."""
    if not details:
        return {"uuid": record.id, "name": record.name}
    now = datetime.now(UTC)
    running = record.state == State.RUNNING and record.started_at is not None
    out: JSON = {
        "uuid": record.id,
        "name": record.name,
        "created_at": iso(record.created_at),
        "state": STATES[record.state],
        "image": record.image,
        "memory_mb": record.memory_bytes // MB,
        "vcpus": record.vcpus,
        "args": record.cmd or [],
        "env": record.env,
        "tags": tags_out(record.tags),
        "started_at": iso(record.started_at),
        "stopped_at": iso(record.stopped_at),
        "stop_reason": record.stop_reason,
        "exit_code": record.exit_code,
        "volumes": [
            {"uuid": a.volume_id, "at": a.mount_path, "readonly": a.readonly} for a in attachments
        ],
    }
    if schedules:
        out["schedules"] = [schedule(s) for s in schedules]
    if running and record.started_at is not None:
        out["uptime_ms"] = int((now - _aware(record.started_at)).total_seconds() * 1000)
    if record.restart_policy is not None:
        out["restart_policy"] = RESTART_POLICIES[record.restart_policy.policy]
    if record.state_error:
        out["message"] = record.state_error
    if lease is not None:
        out["private_ip"] = lease.ip
        out["network_interfaces"] = [{"private_ip": lease.ip, "mac": lease.mac}]
    if membership is not None:
        group, member = membership
        out["service_group"] = {
            "uuid": group.id, "name": group.name,
            "domains": [{"fqdn": d.name} for d in group.domains],
        }  # fmt: skip
        if member.scale_to_zero is not None:
            out["scale_to_zero"] = member.scale_to_zero.model_dump()
    return {k: v for k, v in out.items() if v is not None}


def schedule(s: Schedule) -> JSON:
    out = {"name": s.name, "when": s.when, "action": s.action, "args": s.args or None,
           "next_at": iso(s.next_at)}  # fmt: skip
    return {k: v for k, v in out.items() if v is not None}


def service_group(group: ServiceGroupRecord, members: list[Member], autoscale: bool) -> JSON:
    return {
        "uuid": group.id,
        "name": group.name,
        "created_at": iso(group.created_at),
        "persistent": group.persistent,
        "autoscale": autoscale,
        "soft_limit": group.soft_limit,
        "hard_limit": group.hard_limit,
        "services": [s.model_dump() for s in group.services],
        "domains": [{"fqdn": d.name} for d in group.domains],
        "instances": [{"uuid": m.instance.id, "name": m.instance.name} for m in members],
        **({"autokill": group.autokill.model_dump()} if group.autokill else {}),
    }


def template(record: SnapshotRecord, clones: int, *, details: bool = True) -> JSON:
    """A template as the seed's `Instance` in state `template` (what the SDK's `Template`
    reads): the instance it was saved from, under the template's own uuid and name."""
    if not details:
        return {"uuid": record.id, "name": record.name}
    source = InstanceRecord.model_validate(record.source)
    return {
        "uuid": record.id,
        "name": record.name,
        "created_at": iso(record.created_at),
        "state": "template",
        "image": source.image,
        "memory_mb": source.memory_bytes // MB,
        "vcpus": source.vcpus,
        "args": source.cmd or [],
        "env": source.env,
        "tags": tags_out(template_tags(record)),
        "clones": clones,  # Ember's: what maps its memory now (a delete is refused meanwhile)
    }


def template_tags(record: SnapshotRecord) -> dict[str, str]:
    """The instance's tags it was saved from, and the snapshot's own."""
    return {**InstanceRecord.model_validate(record.source).tags, **record.tags}


def autoscale(
    group: ServiceGroupRecord, record: AutoscaleRecord, template: SnapshotRecord | None = None
) -> JSON:
    """The seed's `GetAutoscaleConfigurationsResponseServiceGroup` (Ember's `create_args`
    and `scale_in` beside it: the models keep extra fields); `template` is the one the
    members are cloned from, if any."""
    shown = {"template": {"uuid": template.id, "name": template.name}} if template else {}
    return {
        **shown,
        "uuid": group.id,
        "name": group.name,
        "enabled": True,
        "min_size": record.min_size,
        "max_size": record.max_size,
        "warmup_time_ms": record.warmup_time_ms,
        "cooldown_time_ms": record.cooldown_time_ms,
        "policies": [policy(p) for p in record.policies],
        "create_args": record.create_args,
        "scale_in": record.scale_in,
    }


def policy(p: AutoscalePolicy) -> JSON:
    """A step policy; whole bounds as integers (the seed's steps are integers)."""
    return {
        "name": p.name, "enabled": p.enabled, "metric": p.metric,
        "adjustment_type": p.adjustment_type,
        "steps": [
            {"adjustment": s.adjustment, "lower_bound": _whole(s.lower_bound),
             "upper_bound": _whole(s.upper_bound)}
            for s in p.steps
        ],
    }  # fmt: skip


def _whole(bound: float | None) -> float | int | None:
    return int(bound) if bound is not None and bound.is_integer() else bound


VOLUME_STATES = {VolumeStatus.CREATING: "initializing", VolumeStatus.READY: "available"}


def volume(record: VolumeRecord, attachments: list[Attachment]) -> JSON:
    state = "mounted" if attachments else VOLUME_STATES.get(record.status, "error")
    return {
        "uuid": record.id,
        "name": record.name,
        "created_at": iso(record.created_at),
        "state": state,
        "size_mb": record.size_gb * 1024,
        "persistent": True,
        "tags": tags_out(record.tags),
        "attached_to": [{"uuid": a.instance_id, "name": a.instance_name} for a in attachments],
        "mounted_by": [
            {"uuid": a.instance_id, "name": a.instance_name, "readonly": a.readonly}
            for a in attachments
        ],
    }


def size_gb(size_mb: object, field: str = "size_mb") -> int:
    """Ember's volumes are whole GiB: a size that is not is refused, never rounded."""
    if not isinstance(size_mb, int) or isinstance(size_mb, bool) or size_mb <= 0:
        raise InvalidArgument(f"{field}: a positive number of MB is required")
    if size_mb % 1024:
        raise InvalidArgument(
            f"{field}: Ember sizes volumes in whole GiB: give a multiple of 1024 (got {size_mb})",
            code="not_supported",
        )
    return size_mb // 1024


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
