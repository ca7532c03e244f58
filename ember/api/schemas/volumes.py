"""Volume answers, built from the stored records field by field."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ember.api.schemas.base import name_field
from ember.volumes import Attachment, VolumeRecord


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
    def of(cls, record: VolumeRecord, attachments: list[Attachment]) -> Volume:
        return cls(
            id=record.id,
            name=record.name,
            size_gb=record.size_gb,
            created_at=record.created_at,
            tags=record.tags,
            attachments=[VolumeAttachment.of(a) for a in attachments],
            status=record.status.value,
        )


class CreateVolumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = name_field("Lowercase letters, digits and dashes; at most 63")
    size_gb: int = Field(description="Size in gigabytes (GiB)")
    id: str | None = Field(default=None, description="Custom id (generated if absent)")
    tags: dict[str, str] | None = None
