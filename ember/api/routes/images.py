"""`/images`: pull, list, get, tag and delete images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.query import tag_filter
from ember.api.schemas.images import CreateImageRequest, Image, TagImageRequest
from ember.api.services import Services
from ember.images.models import ImageRecord

router = APIRouter(prefix="/images", tags=["images"])
ImageName = Annotated[str, Path(description="Image reference (normalized or not) or digest")]


def _answer(svc: Services, record: ImageRecord) -> Image:
    images = svc.images
    return Image.of(record, images.queue_position(record), images.progress(record))


@router.post(
    "",
    status_code=202,
    response_model=Image,
    summary="Pull and convert an image",
    responses=error_responses(400),
)
async def create_image(body: CreateImageRequest, svc: ServicesDep) -> Image:
    credentials = body.credentials.borrowed() if body.credentials else None
    record = await svc.images.create(
        body.name, tags=body.tags, platform=body.platform, credentials=credentials
    )
    return _answer(svc, record)


@router.get("", response_model=list[Image], summary="List images", responses=error_responses(400))
async def list_images(request: Request, svc: ServicesDep) -> list[Image]:
    records = svc.images.find(tag_filter(request))
    return [_answer(svc, record) for record in records]


@router.get(
    "/{name:path}",
    response_model=Image,
    summary="Get an image",
    responses=error_responses(400, 404),
)
async def get_image(name: ImageName, svc: ServicesDep) -> Image:
    return _answer(svc, svc.images.get(name))


@router.post(
    "/{name:path}/tag",
    response_model=Image,
    summary="Tag an image locally",
    responses=error_responses(400, 404, 409),
)
async def tag_image(name: ImageName, body: TagImageRequest, svc: ServicesDep) -> Image:
    return _answer(svc, svc.images.tag(name, body.target))


@router.delete(
    "/{name:path}",
    status_code=204,
    summary="Delete an image",
    responses=error_responses(400, 404, 409),
)
async def delete_image(name: ImageName, svc: ServicesDep) -> Response:
    svc.images.delete(name)
    return Response(status_code=204)
