"""Templates (Ember extension), built from the domain's snapshot records field by field."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from ember.instances import InstanceRecord
from ember.snapshots.models import SnapshotRecord

__all__ = ["Template"]


class Template(BaseModel):
    """A VM saved once ready and frozen for cloning (`state` is always `Template`)."""

    id: str
    name: str
    state: Literal["Template"] = "Template"
    image: str
    image_digest: str
    size_bytes: int = Field(description="Guest memory")
    vcpus: int
    created_at: datetime
    disk_bytes: int = Field(description="Every file of the template, as allocated on disk")
    memory_bytes: int = Field(description="Its saved memory, as allocated on disk")
    shared_memory: bool = Field(
        description="Clones map its memory copy-on-write (it was booted to be shared); "
        "false: each clone gets a copy"
    )
    clones: list[str] = Field(description="What maps its memory now: it cannot be deleted")

    @classmethod
    def of(cls, r: SnapshotRecord, clones: list[str]) -> Template:
        source = InstanceRecord.model_validate(r.source)
        memory = r.memory
        return cls(
            id=r.id,
            name=r.name or r.id,
            image=source.image,
            image_digest=source.image_digest,
            size_bytes=source.memory_bytes,
            vcpus=source.vcpus,
            created_at=r.created_at,
            disk_bytes=r.size_bytes,
            memory_bytes=memory.memory_bytes if memory else 0,
            shared_memory=source.shareable_memory,
            clones=clones,
        )
