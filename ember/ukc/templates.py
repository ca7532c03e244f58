"""`/v1/instances/templates`: Unikraft Cloud's templates over Ember's `Templates`.

A template is Ember's (a flagged Standby snapshot, ember/templates), shown as the
seed's `Instance` in state `template` under the data key `instances`. Creating one
from a Running instance is `Templates.from_instance` (the instance is saved and
gone, as on Unikraft Cloud); preparing one from an image goes through the instance
create (`template.prepare`, `instances.py`), as the SDK's `templates.prepare` sends it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ember.api.deps import ServicesDep
from ember.api.services import Services
from ember.errors import InvalidArgument
from ember.snapshots.models import SnapshotRecord
from ember.ukc import convert
from ember.ukc import requests as req
from ember.ukc.batch import get_route, item_routes
from ember.ukc.envelope import Timer, each, envelope, item_error
from ember.ukc.listing import listing

JSON = dict[str, Any]
KEY = "instances"  # the SDK reads templates under the instances' key
# Registered before the instances' router: `/v1/instances/{uuid}` would take "templates".
router = APIRouter(prefix="/v1/instances/templates", tags=["v1"])


def show(svc: Services, record: SnapshotRecord, *, details: bool = True) -> JSON:
    return convert.template(record, len(svc.templates.clones(record)), details=details)


def get(svc: Services, ref: JSON) -> SnapshotRecord:
    return convert.pick(ref, svc.templates.get, "template")


@router.get("", summary="List templates (Unikraft Cloud)")
async def list_templates(request: Request, svc: ServicesDep) -> JSONResponse:
    timer, details = Timer(), req.flag(request, "details")
    items = listing(
        request, svc.templates.all(), svc.templates.get,
        lambda r: show(svc, r, details=details), "template", convert.template_tags,
    )  # fmt: skip
    return envelope(KEY, items, timer)


get_route(router, KEY, lambda svc, ref: show(svc, get(svc, ref)), "Get a template by uuid")


@router.post("", summary="Save Running instances as templates (each instance is gone)")
async def create(request: Request, svc: ServicesDep) -> JSONResponse:
    timer, items = Timer(), await req.body_items(request)
    return envelope(KEY, await each(items, lambda item: _from_instance(svc, item)), timer)


async def _from_instance(svc: Services, item: JSON) -> JSON:
    """The item names a Running instance; the template takes its name. `timeout_s`
    asks for nothing more: the save is done when this answers."""
    req.unsupported(item, ("autokill",), "template")
    instance = convert.pick(item, svc.instances.get, "instance")
    template = await svc.templates.from_instance(instance.id)
    return {"uuid": template.id, "name": template.name, "state": "template"}


async def _delete(svc: Services, ref: JSON) -> JSON:
    """Refused (`in_use`) while clones map the template's memory."""
    template = get(svc, ref)
    await svc.templates.delete(template.id)
    return {"uuid": template.id, "name": template.name}


item_routes(router, KEY, "DELETE", "", _delete, "Delete templates")


@router.patch("", summary="Update templates (not supported)")
@router.patch("/{uuid}", summary="Update a template (not supported)")
async def update(request: Request) -> JSONResponse:
    error = InvalidArgument("a template cannot change: delete it and save another",
                            code="not_supported")  # fmt: skip
    return envelope(KEY, [item_error(error)], Timer())
