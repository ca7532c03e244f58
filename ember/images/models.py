"""The stored image record and its statuses."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field

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
