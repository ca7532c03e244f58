"""`/v1/services`: Unikraft Cloud's service groups over Ember's `GroupManager`, whose
request types already speak the seed's fields (`ember/groups/requests.py`)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from ember.api.deps import ServicesDep
from ember.api.services import Services
from ember.errors import EmberError, InvalidArgument, NotFound
from ember.groups.autoscale import AutoscaleConfigRequest, AutoscalePolicyRequest
from ember.groups.autoscale.members import TEMPLATE
from ember.groups.autoscale.models import AutoscaleRecord
from ember.groups.models import ServiceGroupRecord
from ember.groups.requests import CreateServiceGroupRequest
from ember.ukc import convert
from ember.ukc import requests as req
from ember.ukc.batch import get_route, item_routes
from ember.ukc.envelope import Timer, each, envelope, item_error, named, ok
from ember.ukc.instances import member_args
from ember.ukc.listing import listing

JSON = dict[str, Any]
KEY = "service_groups"
router = APIRouter(prefix="/v1/services", tags=["v1"])
LIMITS = ("soft_limit", "hard_limit")
M = TypeVar("M", bound=BaseModel)


def show(svc: Services, group: ServiceGroupRecord) -> JSON:
    configured = _configured(svc, group) is not None
    return convert.service_group(group, svc.groups.members_of(group.id), configured)


def _get(svc: Services, ref: JSON) -> ServiceGroupRecord:
    return convert.pick(ref, svc.groups.get, "service group")


@router.post("", summary="Create a service group (Unikraft Cloud)")
async def create(request: Request, svc: ServicesDep) -> JSONResponse:
    timer, body = Timer(), await req.body_object(request)
    try:
        wanted = _validated(CreateServiceGroupRequest, body, "service group")
        item = {"status": "success", **show(svc, await svc.groups.create(wanted))}
    except EmberError as exc:
        item = item_error(exc, named(body))
    return envelope(KEY, [item], timer)


@router.get("", summary="List service groups")
async def list_groups(request: Request, svc: ServicesDep) -> JSONResponse:
    timer = Timer()
    items = listing(request, svc.groups.find(), svc.groups.get, lambda g: show(svc, g),
                    "service group")  # fmt: skip
    return envelope(KEY, items, timer)


async def _delete(svc: Services, ref: JSON) -> JSON:
    group = _get(svc, ref)
    await svc.groups.delete(group.id)
    return {"uuid": group.id, "name": group.name}


@router.patch("", summary="Update service groups (soft and hard limits)")
async def update(request: Request, svc: ServicesDep) -> JSONResponse:
    """The items of one group are applied together (the SDK sends `hard_limit` and
    `soft_limit` as two items: checked one at a time, lowering both would be refused)."""
    timer, items = Timer(), await req.body_items(request)
    changes: dict[str, dict[str, int]] = {}
    checked: list[ServiceGroupRecord | EmberError] = []
    for item in items:
        try:
            group, prop, value = _limit_change(svc, item)
            changes.setdefault(group.id, {})[prop] = value
            checked.append(group)
        except EmberError as exc:
            checked.append(exc)
    applied: dict[str, ServiceGroupRecord | EmberError] = {}
    for group_id, limits in changes.items():
        try:
            applied[group_id] = await svc.groups.set_limits(
                group_id, limits.get("soft_limit"), limits.get("hard_limit")
            )
        except EmberError as exc:
            applied[group_id] = exc
    out = []
    for item, result in zip(items, checked, strict=True):
        result = result if isinstance(result, EmberError) else applied[result.id]
        if isinstance(result, EmberError):
            out.append(item_error(result, named(item)))
        else:
            out.append({"status": "success", "uuid": result.id, "name": result.name})
    return envelope(KEY, out, timer)


def _limit_change(svc: Services, item: JSON) -> tuple[ServiceGroupRecord, str, int]:
    group = _get(svc, item)
    prop, op, value = item.get("prop"), item.get("op"), item.get("value")
    if prop not in LIMITS:
        raise InvalidArgument(
            f"prop {prop!r}: Ember changes soft_limit and hard_limit of a group; "
            "services, domains and autokill are set at create",
            code="not_supported",
        )
    if op != "set" or not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{prop}: op 'set' with an integer value")
    return group, str(prop), value


# ---- autoscale: `AutoscaleManager` (ember/groups/autoscale) in the seed's shapes ---------
# Registered before `/{uuid}`, which would take `autoscale` for a uuid.


def _configured(svc: Services, group: ServiceGroupRecord) -> AutoscaleRecord | None:
    return svc.autoscale.repo.get(group.id)


def _configuration(svc: Services, group: ServiceGroupRecord) -> JSON:
    """A group without one is `enabled: false` (the seed's sizes are "only if enabled")."""
    record = _configured(svc, group)
    if record is None:
        return {"uuid": group.id, "name": group.name, "enabled": False}
    template = None
    if TEMPLATE in record.create_args:
        with contextlib.suppress(NotFound):  # deleted since: the members cannot be made
            template = svc.templates.get(record.create_args[TEMPLATE])
    return convert.autoscale(group, record, template)


@router.get("/autoscale", summary="Autoscale configurations (by uuid/name; none: all)")
async def get_autoscale(request: Request, svc: ServicesDep) -> JSONResponse:
    timer = Timer()
    configured = [g for g in svc.groups.find() if _configured(svc, g) is not None]
    items = listing(request, configured, svc.groups.get, lambda g: _configuration(svc, g),
                    "service group")  # fmt: skip
    return envelope(KEY, items, timer)


@router.get("/{uuid}/autoscale", summary="A group's autoscale configuration")
async def get_autoscale_one(uuid: str, svc: ServicesDep) -> JSONResponse:
    timer = Timer()
    try:
        item = ok(_configuration(svc, _get(svc, {"uuid": uuid})))
    except EmberError as exc:
        item = item_error(exc, {"uuid": uuid})
    return envelope(KEY, [item], timer)


async def _configure(svc: Services, item: JSON) -> JSON:
    group = _get(svc, item)
    fields = {k: v for k, v in item.items() if k not in ("uuid", "name")}
    if isinstance(fields.get("create_args"), dict):
        fields["create_args"] = _member_args(svc, fields["create_args"])
    fields["policies"] = [_policy_fields(p) for p in fields.get("policies") or []]
    svc.autoscale.configure(
        group.id, _validated(AutoscaleConfigRequest, fields, "autoscale configuration")
    )
    return {"uuid": group.id, "name": group.name}


def _member_args(svc: Services, args: JSON) -> JSON:
    """The seed's `create_args`: an instance create, or `template` (uuid or name) alone
    (Ember's rule: members are its clones; anything beside it is refused there)."""
    template = args.get("template")
    if template is None:
        return member_args(args)
    if not isinstance(template, dict):
        raise InvalidArgument("create_args.template: an object with the template's uuid or name")
    rest = {k: v for k, v in args.items() if k != "template" and (k, v) != ("autostart", True)}
    return {**rest, TEMPLATE: convert.pick(template, svc.templates.get, "template").id}


async def _unconfigure(svc: Services, ref: JSON) -> JSON:
    group = _get(svc, ref)
    svc.autoscale.delete(group.id)
    return {"uuid": group.id, "name": group.name}


item_routes(router, KEY, "POST", "/autoscale", _configure, "Create autoscale configurations")
item_routes(router, KEY, "DELETE", "/autoscale", _unconfigure, "Delete autoscale configurations")

POLICIES = "policies"


@router.post("/{uuid}/autoscale/policies", summary="Add autoscale policies")
async def add_policies(uuid: str, request: Request, svc: ServicesDep) -> JSONResponse:
    """The seed's `{name, type: AutoscalePolicy}`, one or a list (a failed item echoes
    the policy's name)."""
    timer, items = Timer(), await req.body_items(request)

    async def add(item: JSON) -> JSON:
        group = _get(svc, {"uuid": uuid})
        kind = item.get("type")
        fields = _policy_fields(
            {**(kind if isinstance(kind, dict) else {}), "name": item.get("name")}
        )
        added = svc.autoscale.add_policy(
            group.id, _validated(AutoscalePolicyRequest, fields, "autoscale policy")
        )
        return {"uuid": group.id, "name": added.name}

    return envelope(POLICIES, await each(items, add), timer)


@router.get("/{uuid}/autoscale/policies", summary="Autoscale policies (body {name}: one)")
async def get_policies(uuid: str, request: Request, svc: ServicesDep) -> JSONResponse:
    timer, body = Timer(), await req.optional_object(request)
    if body.get("name") is not None:
        return await get_policy(uuid, str(body["name"]), svc)
    try:
        _, record = svc.autoscale.get(_get(svc, {"uuid": uuid}).id)
        items = [ok({"name": p.name, "policy": convert.policy(p)}) for p in record.policies]
    except EmberError as exc:
        items = [item_error(exc, {"uuid": uuid})]
    return envelope(POLICIES, items, timer)


@router.get("/{uuid}/autoscale/policies/{name}", summary="An autoscale policy")
async def get_policy(uuid: str, name: str, svc: ServicesDep) -> JSONResponse:
    timer = Timer()

    async def read(_: JSON) -> JSON:
        found = svc.autoscale.policy(_get(svc, {"uuid": uuid}).id, name)
        return {"name": found.name, "policy": convert.policy(found)}

    return envelope(POLICIES, await each([{"name": name}], read), timer)


@router.delete("/{uuid}/autoscale/policies", summary="Delete autoscale policies (body {name})")
async def delete_policies(uuid: str, request: Request, svc: ServicesDep) -> JSONResponse:
    timer, items = Timer(), await req.body_items(request)
    return envelope(POLICIES, await each(items, _deleting(svc, uuid)), timer)


@router.delete("/{uuid}/autoscale/policies/{name}", summary="Delete an autoscale policy")
async def delete_policy(uuid: str, name: str, svc: ServicesDep) -> JSONResponse:
    timer = Timer()
    return envelope(POLICIES, await each([{"name": name}], _deleting(svc, uuid)), timer)


def _deleting(svc: Services, uuid: str) -> Callable[[JSON], Awaitable[JSON]]:
    async def delete(item: JSON) -> JSON:
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidArgument("name: the policy's name is required")
        svc.autoscale.delete_policy(_get(svc, {"uuid": uuid}).id, name)
        return {"name": name}

    return delete


def _policy_fields(policy: object) -> JSON:
    """The seed's `AutoscalePolicy` for Ember's request (fields the SDK left unset are
    absent; a null is taken as absent too)."""
    if not isinstance(policy, dict):
        raise InvalidArgument("policies: each policy is an object")
    return {k: v for k, v in policy.items() if v is not None}


def _validated(model: type[M], fields: JSON, what: str) -> M:
    """Ember's own request type; its first complaint, named, as a 400 item."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise InvalidArgument(f"invalid {what}: {where}: {error['msg']}") from exc


item_routes(router, KEY, "DELETE", "", _delete, "Delete service groups")


get_route(router, KEY, lambda svc, ref: show(svc, _get(svc, ref)), "Get a service group by uuid")
