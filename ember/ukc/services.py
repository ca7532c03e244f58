"""`/v1/services`: Unikraft Cloud's service groups over Ember's `GroupManager`, whose
request types already speak the seed's fields (`ember/groups/requests.py`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ember.api.deps import ServicesDep
from ember.api.services import Services
from ember.errors import EmberError, InvalidArgument
from ember.groups.models import ServiceGroupRecord
from ember.groups.requests import CreateServiceGroupRequest
from ember.ukc import convert
from ember.ukc import requests as req
from ember.ukc.batch import item_routes
from ember.ukc.envelope import Timer, envelope, item_error, named
from ember.ukc.listing import listing

JSON = dict[str, Any]
KEY = "service_groups"
router = APIRouter(prefix="/v1/services", tags=["v1"])
LIMITS = ("soft_limit", "hard_limit")


def show(svc: Services, group: ServiceGroupRecord) -> JSON:
    return convert.service_group(group, svc.groups.members_of(group.id))


def _get(svc: Services, ref: JSON) -> ServiceGroupRecord:
    return convert.pick(ref, svc.groups.get, "service group")


@router.post("", summary="Create a service group (Unikraft Cloud)")
async def create(request: Request, svc: ServicesDep) -> JSONResponse:
    timer, body = Timer(), await req.body_object(request)
    try:
        try:
            wanted = CreateServiceGroupRequest.model_validate(body)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise InvalidArgument(f"invalid service group: {where}: {error['msg']}") from exc
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


# ---- autoscale: not built here (the autoscale branch); one place to wire it -------------


@router.api_route("/autoscale", methods=["GET", "POST", "DELETE"], summary="Autoscale")
@router.api_route("/{uuid}/autoscale", methods=["GET", "POST", "DELETE"], summary="Autoscale")
@router.api_route("/{uuid}/autoscale/policies", methods=["GET", "POST", "DELETE"],
                  summary="Autoscale policies")  # fmt: skip
@router.api_route("/{uuid}/autoscale/policies/{name}", methods=["GET", "DELETE"],
                  summary="Autoscale policy")  # fmt: skip
async def autoscale(request: Request) -> JSONResponse:
    error = InvalidArgument(f"autoscale is {req.NOT_YET}", code="not_supported")
    return envelope(KEY, [item_error(error)], Timer())


item_routes(router, KEY, "DELETE", "", _delete, "Delete service groups")


@router.get("/{uuid}", summary="Get a service group by uuid")
async def get_group(uuid: str, svc: ServicesDep) -> JSONResponse:
    timer = Timer()
    try:
        item = {"status": "success", **show(svc, _get(svc, {"uuid": uuid}))}
    except EmberError as exc:
        item = item_error(exc, {"uuid": uuid})
    return envelope(KEY, [item], timer)
