"""`/images`: pull, list, get, tag and delete images."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.query import tag_filter
from ember.images.distribution import Credentials
from ember.images.manager import ImageManager
from ember.images.models import BuildProgress, ImageRecord

router = APIRouter(prefix="/images", tags=["images"])
ImageName = Annotated[str, Path(description="Image reference (normalized or not) or digest")]


class Image(BaseModel):
    name: str = Field(description="Normalized OCI image reference (tag or digest)")
    digest: str = Field(description="Resolved manifest digest (empty until resolved)")
    status: Literal["pending", "pulling", "converting", "ready", "failed"]
    created_at: datetime
    platform: str | None = None
    error: str | None = None
    queue_position: int | None = None
    size_bytes: int | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] | None = None
    working_dir: str | None = None
    tags: dict[str, str] | None = None
    progress: BuildProgress | None = Field(
        default=None,
        description="Ember extension: how far a pull or conversion has got "
        "(null unless the status is pulling or converting)",
    )

    @classmethod
    def of(cls, record: ImageRecord, manager: ImageManager) -> Image:
        return cls(
            **record.model_dump(exclude={"id", "source", "requested_platform", "user"}),
            queue_position=manager.queue_position(record),
            progress=manager.progress(record),
        )


class PushCredentials(BaseModel):
    username: str | None = None
    password: str | None = None
    registry_token: str | None = None


class CreateImageRequest(BaseModel):
    name: str = Field(min_length=1, description="OCI image reference, e.g. alpine:3.20")
    platform: str | None = Field(default=None, description="os/arch[/variant]")
    tags: dict[str, str] | None = None
    credentials: PushCredentials | None = None


class TagImageRequest(BaseModel):
    target: str = Field(min_length=1, description="Reference the new tag should have")


@router.post(
    "",
    status_code=202,
    response_model=Image,
    summary="Pull and convert an image",
    responses=error_responses(400),
)
async def create_image(body: CreateImageRequest, svc: ServicesDep) -> Image:
    creds = body.credentials
    credentials = (
        Credentials(username=creds.username, password=creds.password, token=creds.registry_token)
        if creds and (creds.username or creds.registry_token)
        else None
    )
    record = await svc.images.create(
        body.name, tags=body.tags, platform=body.platform, credentials=credentials
    )
    return Image.of(record, svc.images)


@router.get("", response_model=list[Image], summary="List images", responses=error_responses(400))
async def list_images(request: Request, svc: ServicesDep) -> list[Image]:
    records = svc.images.find(tag_filter(request))
    return [Image.of(record, svc.images) for record in records]


@router.get(
    "/{name:path}",
    response_model=Image,
    summary="Get an image",
    responses=error_responses(400, 404),
)
async def get_image(name: ImageName, svc: ServicesDep) -> Image:
    return Image.of(svc.images.get(name), svc.images)


@router.post(
    "/{name:path}/tag",
    response_model=Image,
    summary="Tag an image locally",
    responses=error_responses(400, 404, 409),
)
async def tag_image(name: ImageName, body: TagImageRequest, svc: ServicesDep) -> Image:
    return Image.of(svc.images.tag(name, body.target), svc.images)


@router.delete(
    "/{name:path}",
    status_code=204,
    summary="Delete an image",
    responses=error_responses(400, 404, 409),
)
async def delete_image(name: ImageName, svc: ServicesDep) -> Response:
    svc.images.delete(name)
    return Response(status_code=204)
