"""The stored image record and its statuses."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from ember.store import StoredRecord


class ImageStatus(StrEnum):
    PENDING = "pending"
    PULLING = "pulling"
    CONVERTING = "converting"
    READY = "ready"
    FAILED = "failed"


class ImageSource(StrEnum):
    PULL = "pull"  # fetched from a registry by reference
    PUSH = "push"  # pushed into the built-in registry; blobs are already local


IN_PROGRESS = {ImageStatus.PENDING, ImageStatus.PULLING, ImageStatus.CONVERTING}


def utcnow() -> datetime:
    return datetime.now(UTC)


class ImageRecord(StoredRecord):
    """One named image. `name` is the normalized reference; several names may share a digest."""

    status: ImageStatus = ImageStatus.PENDING
    source: ImageSource = ImageSource.PULL
    digest: str = ""
    platform: str | None = None
    requested_platform: str = "linux/amd64"
    error: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] | None = None
    working_dir: str | None = None
    user: str | None = None
    size_bytes: int | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


BuildPhase = Literal["resolving", "downloading", "unpacking", "building"]


class BuildProgress(BaseModel):
    """How far an image in progress has got: kept in memory only, never stored."""

    phase: BuildPhase = Field(
        default="resolving",
        description="resolving (manifest), downloading (config and layers), unpacking "
        "(layers into a tree), building (the root disk)",
    )
    bytes_done: int | None = Field(
        default=None,
        description="Bytes of the current phase done: downloading counts config and layer "
        "bytes in the blob store (cached ones included), unpacking counts layer bytes read; "
        "null where not measurable (resolving, building)",
    )
    bytes_total: int | None = Field(
        default=None, description="Bytes the current phase has to do in all (null if unknown)"
    )
