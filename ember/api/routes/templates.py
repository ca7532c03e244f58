"""`/templates` (Ember extension): VMs booted once, saved when ready, cloned by
`POST /instances` with `template`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.schemas.templates import Template
from ember.api.services import Services
from ember.snapshots.models import SnapshotRecord
from ember.templates import CreateTemplateRequest

router = APIRouter(
    prefix="/templates", tags=["templates (Ember extension)"], responses=error_responses(400, 404)
)
TemplateRef = Annotated[str, Path(alias="id", description="Template id, name or id prefix")]


def _answer(svc: Services, record: SnapshotRecord) -> Template:
    return Template.of(record, svc.templates.clones(record))


@router.post(
    "",
    status_code=201,
    response_model=Template,
    summary="Boot an image, wait until ready, save it as a template",
    responses=error_responses(409, 429, 503),
)
async def create_template(body: CreateTemplateRequest, svc: ServicesDep) -> Template:
    await svc.images.wait_ready(body.image, svc.settings.image_ready_wait_seconds)
    return _answer(svc, await svc.templates.create(body))


@router.get("", response_model=list[Template], summary="List templates")
async def list_templates(svc: ServicesDep) -> list[Template]:
    return [_answer(svc, t) for t in svc.templates.all()]


@router.get("/{id}", response_model=Template, summary="Get a template")
async def get_template(ref: TemplateRef, svc: ServicesDep) -> Template:
    return _answer(svc, svc.templates.get(ref))


@router.delete(
    "/{id}",
    status_code=204,
    summary="Delete a template (409 in_use while clones map its memory)",
    responses=error_responses(409),
)
async def delete_template(ref: TemplateRef, svc: ServicesDep) -> Response:
    await svc.templates.delete(ref)
    return Response(status_code=204)
