"""`/builds` and `/builders`: images built from source inside builder VMs (ember/builds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Request, Response, UploadFile
from fastapi.responses import StreamingResponse

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.query import tag_filter
from ember.api.schemas.builds import Build, Builder, CreateBuilderRequest
from ember.api.services import Services
from ember.builds import BuilderRecord, BuildRecord, parse_build_form
from ember.ids import new_id

router = APIRouter(prefix="/builds", tags=["builds"], responses=error_responses(400, 404, 409))
builders_router = APIRouter(
    prefix="/builders", tags=["builders"], responses=error_responses(400, 404, 409)
)

BuildRef = Annotated[str, Path(alias="id", description="Build id")]
BuilderRef = Annotated[str, Path(alias="id", description="Builder id")]
CHUNK = 1024 * 1024


def _build(svc: Services, record: BuildRecord) -> Build:
    return Build.of(record, svc.builds.queue_position(record))


def _builder(svc: Services, record: BuilderRecord) -> Builder:
    builds = svc.builds
    return Builder.of(record, builds.queued_builds(record.id), builds.active_build(record.id))


@router.post("", status_code=202, response_model=Build, summary="Create a build (queued)")
async def create_build(
    svc: ServicesDep,
    source: Annotated[UploadFile, File(description="Source tarball (tar.gz)")],
    dockerfile: Annotated[str | None, Form(description="Dockerfile content")] = None,
    builder_id: Annotated[str | None, Form(description="Builder whose cache backs it")] = None,
    base_image_digest: Annotated[str | None, Form()] = None,
    cache_scope: Annotated[str | None, Form()] = None,
    timeout_seconds: Annotated[str | None, Form(description="Default 600")] = None,
    memory_mb: Annotated[str | None, Form(description="Builder VM memory, default 2048")] = None,
    cpus: Annotated[str | None, Form(description="Builder VM vCPUs, default 2")] = None,
    image_name: Annotated[str | None, Form(description="Default builds/{id}")] = None,
    secrets: Annotated[str | None, Form(description='JSON: [{"id": "npm_token"}]')] = None,
    is_admin_build: Annotated[str | None, Form()] = None,
    global_cache_key: Annotated[str | None, Form()] = None,
    tags: Annotated[str | None, Form(description="JSON object of tags")] = None,
) -> Build:
    build_id = new_id()
    fields = {"dockerfile": dockerfile, "builder_id": builder_id, "cache_scope": cache_scope,
              "base_image_digest": base_image_digest, "timeout_seconds": timeout_seconds,
              "memory_mb": memory_mb, "cpus": cpus, "image_name": image_name,
              "secrets": secrets, "tags": tags, "is_admin_build": is_admin_build,
              "global_cache_key": global_cache_key}  # fmt: skip
    form = parse_build_form(fields, build_id)

    async def chunks() -> AsyncIterator[bytes]:
        while data := await source.read(CHUNK):
            yield data

    record = await svc.builds.create(chunks(), form.options, tags=form.tags,
                                     secrets=form.secrets, id=build_id)  # fmt: skip
    return _build(svc, record)


@router.get("", response_model=list[Build], summary="List builds")
async def list_builds(request: Request, svc: ServicesDep) -> list[Build]:
    return [_build(svc, r) for r in svc.builds.find(tag_filter(request))]


@router.get("/{id}", response_model=Build, summary="Get a build")
async def get_build(ref: BuildRef, svc: ServicesDep) -> Build:
    return _build(svc, svc.builds.get(ref))


@router.delete("/{id}", status_code=204, summary="Cancel a build")
async def cancel_build(ref: BuildRef, svc: ServicesDep) -> Response:
    await svc.builds.cancel(ref)
    return Response(status_code=204)


@router.get(
    "/{id}/events",
    summary="Build events (log lines, status changes) as Server-Sent Events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def build_events(ref: BuildRef, svc: ServicesDep, follow: bool = False) -> StreamingResponse:
    record = svc.builds.get(ref)
    events = svc.builds.events.follow(record.id, follow=follow)

    async def stream() -> AsyncIterator[bytes]:
        async for event in events:
            yield f"data: {event.model_dump_json(exclude_none=True)}\n\n".encode()

    return StreamingResponse(
        stream(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )  # fmt: skip


@builders_router.post("", status_code=201, response_model=Builder, summary="Create a builder")
async def create_builder(body: CreateBuilderRequest, svc: ServicesDep) -> Builder:
    record = await svc.builds.create_builder(
        name=body.name, disk_size_gb=body.disk_size_gb, id=body.id, tags=body.tags
    )
    return _builder(svc, record)


@builders_router.get("", response_model=list[Builder], summary="List builders")
async def list_builders(request: Request, svc: ServicesDep) -> list[Builder]:
    return [_builder(svc, r) for r in svc.builds.find_builders(tag_filter(request))]


@builders_router.get("/{id}", response_model=Builder, summary="Get a builder")
async def get_builder(ref: BuilderRef, svc: ServicesDep) -> Builder:
    return _builder(svc, svc.builds.get_builder(ref))


@builders_router.delete("/{id}", status_code=204, summary="Delete a builder and its cache")
async def delete_builder(ref: BuilderRef, svc: ServicesDep) -> Response:
    await svc.builds.delete_builder(ref)
    return Response(status_code=204)


@builders_router.post(
    "/{id}/prune", status_code=202, response_model=Builder, summary="Reset the builder's cache"
)
async def prune_builder(ref: BuilderRef, svc: ServicesDep) -> Builder:
    return _builder(svc, await svc.builds.prune_builder(ref))


__all__ = ["builders_router", "router"]
