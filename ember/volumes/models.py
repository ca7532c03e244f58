"""Stored volume records and attachments."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from ember.store import StoredRecord


def utcnow() -> datetime:
    return datetime.now(UTC)


class VolumeStatus(StrEnum):
    CREATING = "creating"  # its disk is being written: never attachable
    READY = "ready"


class VolumeRecord(StoredRecord):
    size_gb: int
    status: VolumeStatus = VolumeStatus.CREATING
    source: Literal["empty", "archive"] = "empty"
    tags: dict[str, str] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


class Attachment(BaseModel):
    """One volume attached to one instance (stored in ``volume_attachments``)."""

    volume_id: str
    instance_id: str
    instance_name: str
    mount_path: str
    readonly: bool = False
    # A private writable layer over a read-only volume, on a disk in the instance dir.
    overlay: bool = False
    overlay_size_bytes: int | None = None
    attached_at: datetime = Field(default_factory=utcnow)
