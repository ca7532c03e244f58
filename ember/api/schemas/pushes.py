"""Push requests and answers (Hypeman's `CreatePushRequest` and `Push`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from ember.api.schemas.images import PushCredentials
from ember.pushes import PushProgress, PushRecord, PushStatus


class CreatePushRequest(BaseModel):
    image: str = Field(min_length=1, description="Ember image name to push (tag or digest form)")
    target: str = Field(min_length=1, description="Full remote reference to push to")
    insecure: bool = Field(default=False, description="Allow pushing to plain-HTTP registries")
    credentials: PushCredentials | None = None


class Push(BaseModel):
    id: str
    image: str = Field(description="Ember image name (normalized ref)")
    digest: str = Field(description="Manifest digest being pushed")
    target: str = Field(description="Remote reference the image is pushed to")
    status: PushStatus
    queue_position: int | None = None
    error: str | None = None
    layers: int | None = Field(default=None, description="Number of layers pushed")
    bytes: int | None = Field(default=None, description="Total compressed layer bytes pushed")
    created_at: datetime
    completed_at: datetime | None = None
    progress: PushProgress | None = Field(
        default=None,
        description="Ember extension: bytes the target holds so far (null unless pushing)",
    )

    @classmethod
    def of(cls, r: PushRecord, queue_position: int | None, progress: PushProgress | None) -> Push:
        return cls(
            id=r.id,
            image=r.image,
            digest=r.digest,
            target=r.target,
            status=r.status,
            queue_position=queue_position,
            error=r.error,
            layers=r.layers,
            bytes=r.bytes,
            created_at=r.created_at,
            completed_at=r.completed_at,
            progress=progress,
        )
