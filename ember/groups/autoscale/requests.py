"""The autoscale requests, strictly typed, and their validation into the domain.

Every refusal is an `InvalidArgument` naming the field, code `invalid_autoscale`
(or `invalid_create_args` for the members' create request), before anything is
stored.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from ember.errors import InvalidArgument
from ember.groups.autoscale.members import TEMPLATE
from ember.groups.autoscale.models import (
    AdjustmentType,
    AutoscalePolicy,
    AutoscalePolicyStep,
    AutoscaleRecord,
    Metric,
    ScaleIn,
)
from ember.instances import CreateInstanceRequest
from ember.validation import validate_name

MAX_SIZE = 64  # a bound of this one host, not the seed's (its quota `max_autoscale_size`)
MAX_STEPS = 16
Number = StrictInt | StrictFloat


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoscalePolicyStepRequest(_Strict):
    adjustment: StrictInt = Field(description="Members to add (change), the size (exact), or "
                                  "percent of the size (percentage); negative shrinks")  # fmt: skip
    lower_bound: Number | None = Field(default=None, description="Inclusive; none: open")
    upper_bound: Number | None = Field(default=None, description="Exclusive; none: open")


class AutoscalePolicyRequest(_Strict):
    name: StrictStr
    enabled: StrictBool = True
    metric: Metric = Field(
        default="cpu",
        description="cpu: mean CPU utilisation (% of vCPUs) of the warm members; inflight "
        "(Ember extension): mean requests in flight per member, from the balancer",
    )
    adjustment_type: AdjustmentType = "change"
    steps: list[AutoscalePolicyStepRequest]


class AutoscaleConfigRequest(_Strict):
    min_size: StrictInt = Field(default=1, description="Fewest members kept running")
    max_size: StrictInt = Field(description="Most members running; never passed")
    warmup_time_ms: StrictInt = Field(
        default=10_000, description="A new member's metrics count only after this long Running"
    )
    cooldown_time_ms: StrictInt = Field(
        default=10_000, description="No policy acts for this long after a change of size"
    )
    create_args: dict[StrictStr, Any] = Field(
        description="How a new member is created: the body of POST /instances without `name` "
        '(members are named <group>-<6 hex>), or {"template": NAME} alone: each member a '
        "clone of that template (stored by its id)",
    )
    scale_in: ScaleIn = Field(
        default="delete", description="Ember extension: retire a member by delete or standby"
    )
    policies: list[AutoscalePolicyRequest] = Field(default_factory=list)


def refuse(message: str, code: str = "invalid_autoscale") -> InvalidArgument:
    return InvalidArgument(message, code=code)


def config_record(
    group_id: str, request: AutoscaleConfigRequest, current: AutoscaleRecord | None
) -> AutoscaleRecord:
    """The configuration a PUT asks for; the cooldown of the last change carries over."""
    if not 0 <= request.min_size <= MAX_SIZE:
        raise refuse(f"min_size: {request.min_size} is not within 0-{MAX_SIZE}")
    if not 1 <= request.max_size <= MAX_SIZE:
        raise refuse(f"max_size: {request.max_size} is not within 1-{MAX_SIZE}")
    if request.min_size > request.max_size:
        raise refuse(f"min_size {request.min_size} is above max_size {request.max_size}")
    for field in ("warmup_time_ms", "cooldown_time_ms"):
        if getattr(request, field) < 0:
            raise refuse(f"{field}: must not be negative")
    policies = [policy(p) for p in request.policies]
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise refuse("policies: names must be unique within the configuration")
    return AutoscaleRecord(
        id=group_id,
        name=group_id,
        min_size=request.min_size,
        max_size=request.max_size,
        warmup_time_ms=request.warmup_time_ms,
        cooldown_time_ms=request.cooldown_time_ms,
        create_args=create_args(request.create_args),
        scale_in=request.scale_in,
        policies=policies,
        last_scaled_at=current.last_scaled_at if current else None,
    )


def create_args(args: dict[str, Any]) -> dict[str, Any]:
    """A member's create request without its name, checked as the instance create checks
    its types (what needs the host, e.g. the image, is checked at each create); or
    `{"template": <name or id>}` alone (the manager checks that it exists)."""
    if "name" in args:
        raise refuse("create_args.name: members are named by the group", "invalid_create_args")
    if TEMPLATE in args:
        others = sorted(set(args) - {TEMPLATE})
        if others:
            raise refuse(
                f"create_args: {', '.join(others)}: a member cloned from a template takes "
                "everything from it; give `template` alone",
                "invalid_create_args",
            )
        if not isinstance(args[TEMPLATE], str):
            raise refuse("create_args.template: a template's name or id", "invalid_create_args")
        return args
    try:
        CreateInstanceRequest.model_validate({**args, "name": "member"})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise refuse(f"create_args.{where}: {first['msg']}", "invalid_create_args") from None
    return args


def policy(request: AutoscalePolicyRequest) -> AutoscalePolicy:
    validate_name(request.name, field="policies.name")
    field = f"policy {request.name!r}"
    if not 1 <= len(request.steps) <= MAX_STEPS:
        raise refuse(f"{field}: give 1-{MAX_STEPS} steps")
    steps = [AutoscalePolicyStep.model_validate(s.model_dump()) for s in request.steps]
    spans = sorted((_lower(s), _upper(s)) for s in steps)
    for lower, upper in spans:
        if not lower < upper:
            raise refuse(f"{field}: a step's lower_bound must be below its upper_bound")
    for (_, upper), (lower, _) in pairwise(spans):
        if lower < upper:
            raise refuse(f"{field}: steps overlap at {lower:g}")
    for step in steps:
        if request.adjustment_type == "exact" and not 0 <= step.adjustment <= MAX_SIZE:
            raise refuse(f"{field}: an exact adjustment is a size within 0-{MAX_SIZE}")
    return AutoscalePolicy(
        name=request.name, enabled=request.enabled, metric=request.metric,
        adjustment_type=request.adjustment_type, steps=steps,
    )  # fmt: skip


def _lower(step: AutoscalePolicyStep) -> float:
    return -math.inf if step.lower_bound is None else step.lower_bound


def _upper(step: AutoscalePolicyStep) -> float:
    return math.inf if step.upper_bound is None else step.upper_bound


__all__ = [
    "MAX_SIZE",
    "AutoscaleConfigRequest",
    "AutoscalePolicyRequest",
    "AutoscalePolicyStepRequest",
    "config_record",
    "create_args",
    "policy",
]
