"""Update (`PATCH /instances/{id}`): change an instance's policies while it runs.

Every field is validated before any is applied, then all are written in one
record update, which is all "taking effect" needs: the reaper, the supervisor
and the health monitor read the record at each pass (the health monitor at
its next probe). A field given as null clears the policy; fields left out stay.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ember.errors import InvalidArgument
from ember.instances import policies
from ember.instances.core import InstanceCore
from ember.instances.models import AutoStandbyPolicy, HealthCheck, InstanceRecord, RestartPolicy
from ember.instances.request import UpdateInstanceRequest
from ember.instances.restarts import policy_replaced
from ember.validation import validate_tags

NOT_UPDATABLE = {
    # The API rotates credentials' values (ember/egress) and passes the rest here.
    "env": "only credential-bound env can be updated (credential brokering needs the "
    "server's networking)",
}


def update(
    core: InstanceCore, instance_id: str, request: UpdateInstanceRequest, *, networked: bool
) -> InstanceRecord:
    """Apply the fields given (a replaced restart policy also re-decides a pending restart,
    `restarts.policy_replaced`), in one record update. `networked`: the instance has a
    network address (for http/tcp health checks)."""
    given = request.model_fields_set
    for name, reason in NOT_UPDATABLE.items():
        if name in given:
            raise InvalidArgument(f"{name}: {reason}", code="not_supported")
    changes: dict[str, object] = {}
    if "ttl" in given or "expires_at" in given:
        changes["expires_at"] = policies.expiry(request.ttl, request.expires_at, datetime.now(UTC))
    if "autokill" in given:
        changes["autokill"] = policies.autokill(request.autokill)
    if "restart_policy" in given:
        changes["restart_policy"] = policies.restart_policy(request.restart_policy)
    if "health_check" in given:
        changes["health_check"] = policies.health_check(request.health_check, networked=networked)
    if "auto_standby" in given:
        changes["auto_standby"] = policies.auto_standby(request.auto_standby)
    if "tags" in given:
        changes["tags"] = validate_tags(request.tags)

    def apply(record: InstanceRecord) -> None:
        for key, value in changes.items():
            setattr(record, key, value)
        if "restart_policy" in changes:
            policy_replaced(record)

    record = core.update(instance_id, apply) if changes else core.current(instance_id)
    if changes:
        described = ", ".join(_describe(k, v) for k, v in changes.items())
        core.event(instance_id, f"updated: {described}")
    return record


def _describe(name: str, value: object) -> str:
    if isinstance(value, RestartPolicy):
        return f"restart_policy={value.policy}"
    if isinstance(value, HealthCheck):
        return f"health_check={value.type}"
    if isinstance(value, AutoStandbyPolicy):
        return f"auto_standby=enabled:{value.enabled},idle_timeout:{value.idle_timeout}"
    if isinstance(value, datetime):
        return f"expires_at={value.isoformat()}"
    return f"{name}={value}"
