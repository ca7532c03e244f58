"""The stored push record and its statuses (Hypeman's `Push`)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from ember.store import StoredRecord


class PushStatus(StrEnum):
    QUEUED = "queued"
    PUSHING = "pushing"
    PUSHED = "pushed"
    FAILED = "failed"


IN_PROGRESS = {PushStatus.QUEUED, PushStatus.PUSHING}


def utcnow() -> datetime:
    return datetime.now(UTC)


class PushRecord(StoredRecord):
    """One push of an image to another registry. Pushes have no names: `name` is the id."""

    image: str  # the image's normalized name
    digest: str  # the image's digest until pushed, then the manifest digest the target holds
    target: str  # the normalized remote reference
    status: PushStatus = PushStatus.QUEUED
    error: str | None = None
    layers: int | None = None
    bytes: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime | None = None


class PushProgress(BaseModel):
    """How far a push has got: kept in memory while it runs, never stored."""

    bytes_done: int = Field(
        description="Bytes of the config and layers the target registry holds so far "
        "(those it already had count from the start)"
    )
    bytes_total: int = Field(description="Bytes of the config and layers in all")
