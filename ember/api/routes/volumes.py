"""`/volumes`: create (empty or from a tar.gz), list, get and delete persistent volumes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.query import tag_filter
from ember.api.schemas.volumes import CreateVolumeRequest, Volume
from ember.api.services import Services
from ember.volumes import VolumeRecord

# Bad input (400), a volume that is not there (404), a name taken or a volume in use (409).
router = APIRouter(prefix="/volumes", tags=["volumes"], responses=error_responses(400, 404, 409))


def _answer(svc: Services, record: VolumeRecord) -> Volume:
    return Volume.of(record, svc.volumes.attachments_of_volume(record.id))


VolumeRef = Annotated[str, Path(alias="id", description="Volume id or name")]


@router.post("", status_code=201, response_model=Volume, summary="Create an empty volume")
async def create_volume(body: CreateVolumeRequest, svc: ServicesDep) -> Volume:
    record = await svc.volumes.create(body.name, body.size_gb, id=body.id, tags=body.tags)
    return _answer(svc, record)


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
    return _answer(svc, record)


@router.get("", response_model=list[Volume], summary="List volumes")
async def list_volumes(request: Request, svc: ServicesDep) -> list[Volume]:
    return [_answer(svc, record) for record in svc.volumes.find(tag_filter(request))]


@router.get("/{id}", response_model=Volume, summary="Get a volume (by id or name)")
async def get_volume(ref: VolumeRef, svc: ServicesDep) -> Volume:
    return _answer(svc, svc.volumes.get(ref))


@router.delete("/{id}", status_code=204, summary="Delete a volume (409 while attached)")
async def delete_volume(ref: VolumeRef, svc: ServicesDep) -> Response:
    svc.volumes.delete(ref)
    return Response(status_code=204)
