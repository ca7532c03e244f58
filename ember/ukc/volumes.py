"""`/v1/volumes`: Unikraft Cloud's volumes over Ember's `VolumeManager`, attached and
detached through `InstanceManager` (which owns the running VM's side of it)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ember.api.deps import ServicesDep
from ember.api.services import Services
from ember.errors import EmberError, InvalidArgument
from ember.ids import new_id
from ember.ukc import convert
from ember.ukc import requests as req
from ember.ukc.batch import get_route, item_routes
from ember.ukc.envelope import Timer, envelope, item_error, named
from ember.ukc.listing import listing
from ember.volumes.models import VolumeRecord

JSON = dict[str, Any]
KEY = "volumes"
router = APIRouter(prefix="/v1/volumes", tags=["v1"])


def show(svc: Services, record: VolumeRecord) -> JSON:
    return convert.volume(record, svc.volumes.attachments_of_volume(record.id))


def _get(svc: Services, ref: JSON) -> VolumeRecord:
    return convert.pick(ref, svc.volumes.get, "volume")


@router.post("", summary="Create a volume (Unikraft Cloud)")
async def create(request: Request, svc: ServicesDep) -> JSONResponse:
    timer, body = Timer(), await req.body_object(request)
    try:
        req.unsupported(body, ("host_path", "template", "filesystem", "uid", "gid", "args",
                               "access_mode"), "volume")  # fmt: skip
        if body.get("quota_policy") not in (None, "static"):
            raise InvalidArgument("quota_policy: Ember's volumes are static", code="not_supported")
        record = await svc.volumes.create(
            body.get("name") or f"v-{new_id()[:8]}", convert.size_gb(body.get("size_mb")),
            tags=convert.tags_in(body.get("tags")) or None,
        )  # fmt: skip
        item = {"status": "success", **show(svc, record)}
    except EmberError as exc:
        item = item_error(exc, named(body))
    return envelope(KEY, [item], timer)


@router.get("", summary="List volumes")
async def list_volumes(request: Request, svc: ServicesDep) -> JSONResponse:
    timer = Timer()
    items = listing(request, svc.volumes.find(), svc.volumes.get, lambda v: show(svc, v),
                    "volume", lambda v: v.tags)  # fmt: skip
    return envelope(KEY, items, timer)


async def _delete(svc: Services, ref: JSON) -> JSON:
    record = _get(svc, ref)
    svc.volumes.delete(record.id)
    return {"uuid": record.id, "name": record.name}


async def _attach(svc: Services, item: JSON) -> JSON:
    record = _get(svc, item)
    target, at = item.get("attach_to"), item.get("at")
    if not isinstance(target, dict) or not isinstance(at, str):
        raise InvalidArgument("attach: `attach_to` (uuid or name) and `at` are required")
    instance = convert.pick(target, svc.instances.get, "instance")
    await svc.instances.attach_volume(
        instance.id, record.id, at, readonly=bool(item.get("readonly", False))
    )
    return {"uuid": record.id, "name": record.name}


async def _detach(svc: Services, item: JSON) -> JSON:
    """From the instance `from` names, or from every instance it is attached to."""
    record = _get(svc, item)
    source = item.get("from")
    wanted = convert.pick(source, svc.instances.get, "instance").id if source else None
    for attachment in svc.volumes.attachments_of_volume(record.id):
        if wanted is None or attachment.instance_id == wanted:
            await svc.instances.detach_volume(attachment.instance_id, record.id)
    return {"uuid": record.id, "name": record.name}


@router.api_route("/templates", methods=["GET", "POST", "PATCH", "DELETE"], summary="Templates")
async def templates(request: Request) -> JSONResponse:
    error = InvalidArgument(f"volume templates are {req.NOT_YET}", code="not_supported")
    return envelope(KEY, [item_error(error)], Timer())


item_routes(router, KEY, "DELETE", "", _delete, "Delete volumes")
item_routes(router, KEY, "PUT", "/attach", _attach, "Attach volumes to instances")
item_routes(router, KEY, "PUT", "/detach", _detach, "Detach volumes")


get_route(router, KEY, lambda svc, ref: show(svc, _get(svc, ref)), "Get a volume by uuid")
