"""`/pushes`: push an image to another registry, list and follow pushes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.schemas.pushes import CreatePushRequest, Push
from ember.api.services import Services
from ember.pushes import PushRecord

router = APIRouter(prefix="/pushes", tags=["pushes"])
PushId = Annotated[str, Path(description="Push id (or a unique prefix of it)")]
POLL_SECONDS = 1  # Retry-After of a new push: how soon its status is worth asking


def _answer(svc: Services, record: PushRecord) -> Push:
    return Push.of(record, svc.pushes.queue_position(record), svc.pushes.progress(record))


@router.post(
    "",
    status_code=202,
    response_model=Push,
    summary="Push an image to a remote registry",
    responses=error_responses(400, 404, 409),
)
async def create_push(body: CreatePushRequest, response: Response, svc: ServicesDep) -> Push:
    record = svc.pushes.create(
        body.image,
        body.target,
        credentials=body.credentials.borrowed() if body.credentials else None,
        insecure=body.insecure,
    )
    response.headers["Location"] = f"/pushes/{record.id}"
    response.headers["Retry-After"] = str(POLL_SECONDS)
    return _answer(svc, record)


@router.get("", response_model=list[Push], summary="List pushes, newest first")
async def list_pushes(svc: ServicesDep) -> list[Push]:
    return [_answer(svc, record) for record in svc.pushes.list()]


@router.get(
    "/{push_id}", response_model=Push, summary="Get a push", responses=error_responses(400, 404)
)
async def get_push(push_id: PushId, svc: ServicesDep) -> Push:
    return _answer(svc, svc.pushes.get(push_id))
