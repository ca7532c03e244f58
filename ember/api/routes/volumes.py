"""`/volumes`: create (empty or from a tar.gz), list, get and delete persistent volumes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ember.api.deps import ServicesDep
from ember.api.query import tag_filter
from ember.volumes import Attachment, VolumeManager, VolumeRecord

router = APIRouter(prefix="/volumes", tags=["volumes"])
VolumeRef = Annotated[str, Path(alias="id", description="Volume id or name")]


class VolumeAttachment(BaseModel):
    instance_id: str = Field(description="ID of the instance this volume is attached to")
    mount_path: str = Field(description="Mount path in the guest")
    readonly: bool = Field(description="Whether the attachment is read-only")
    overlay: bool = Field(
        default=False, description="Ember extension: a private writable layer over the volume"
    )

    @classmethod
    def of(cls, attachment: Attachment) -> VolumeAttachment:
        return cls(
            instance_id=attachment.instance_id,
            mount_path=attachment.mount_path,
            readonly=attachment.readonly,
            overlay=attachment.overlay,
        )


class Volume(BaseModel):
    id: str
    name: str
    size_gb: int
    created_at: datetime
    tags: dict[str, str] | None = None
    attachments: list[VolumeAttachment] = Field(
        default_factory=list, description="Current attachments (empty if not attached)"
    )
    status: Literal["creating", "ready"] = Field(
        description="Ember extension: `creating` while the disk is written (not attachable)"
    )

    @classmethod
    def of(cls, record: VolumeRecord, manager: VolumeManager) -> Volume:
        return cls(
            id=record.id,
            name=record.name,
            size_gb=record.size_gb,
            created_at=record.created_at,
            tags=record.tags,
            attachments=[VolumeAttachment.of(a) for a in manager.attachments_of_volume(record.id)],
            status=record.status.value,
        )


class CreateVolumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Lowercase letters, digits and dashes; at most 63")
    size_gb: int = Field(description="Size in gigabytes (GiB)")
    id: str | None = Field(default=None, description="Custom id (generated if absent)")
    tags: dict[str, str] | None = None


@router.post("", status_code=201, response_model=Volume, summary="Create an empty volume")
async def create_volume(body: CreateVolumeRequest, svc: ServicesDep) -> Volume:
    record = await svc.volumes.create(body.name, body.size_gb, id=body.id, tags=body.tags)
    return Volume.of(record, svc.volumes)


@router.post(
    "/from-archive",
    status_code=201,
    response_model=Volume,
    summary="Create a volume holding a tar.gz archive's content",
    description="The request body is the tar.gz archive (Content-Type: application/gzip). "
    "`size_gb` is the most its content may take: more is a 400 `archive_too_large`. "
    "Absolute paths, `..`, links leaving the volume, device nodes and FIFOs are refused "
    "(400 `unsafe_archive`); a body that is not a tar.gz is a 400 `invalid_archive`.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def create_volume_from_archive(
    request: Request,
    svc: ServicesDep,
    name: Annotated[str, Query(description="Volume name")],
    size_gb: Annotated[int, Query(description="Most the content may take, in GiB")],
    id: Annotated[str | None, Query(description="Custom id (generated if absent)")] = None,
) -> Volume:
    record = await svc.volumes.from_archive(
        request.stream(), name=name, size_gb=size_gb, id=id, tags=tag_filter(request)
    )
    return Volume.of(record, svc.volumes)


@router.get("", response_model=list[Volume], summary="List volumes")
async def list_volumes(request: Request, svc: ServicesDep) -> list[Volume]:
    return [Volume.of(record, svc.volumes) for record in svc.volumes.find(tag_filter(request))]


@router.get("/{id}", response_model=Volume, summary="Get a volume (by id or name)")
async def get_volume(ref: VolumeRef, svc: ServicesDep) -> Volume:
    return Volume.of(svc.volumes.get(ref), svc.volumes)


@router.delete("/{id}", status_code=204, summary="Delete a volume (409 while attached)")
async def delete_volume(ref: VolumeRef, svc: ServicesDep) -> Response:
    svc.volumes.delete(ref)
    return Response(status_code=204)
