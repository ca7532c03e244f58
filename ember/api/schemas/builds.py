"""Build and builder answers (Hypeman's `Build`, `Builder`, `BuildEvent`), field by field."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ember.api.schemas.base import Omitted
from ember.builds import BuilderRecord, BuilderStatus, BuildRecord, BuildStatus


class BuildProvenance(BaseModel):
    base_image_digest: Omitted[str] = None
    source_hash: Omitted[str] = None
    buildkit_version: Omitted[str] = Field(
        default=None, description="Hypeman's name; Ember builds with buildah and gives its version"
    )
    timestamp: Omitted[datetime] = None


class Build(BaseModel):
    id: str
    status: BuildStatus
    created_at: datetime
    builder_id: Omitted[str] = None
    builder_instance_id: Omitted[str] = None
    queue_position: Omitted[int] = None
    image_digest: Omitted[str] = None
    image_ref: Omitted[str] = None
    error: Omitted[str] = None
    provenance: Omitted[BuildProvenance] = None
    started_at: Omitted[datetime] = None
    completed_at: Omitted[datetime] = None
    duration_ms: Omitted[int] = None
    tags: Omitted[dict[str, str]] = None

    @classmethod
    def of(cls, r: BuildRecord, queue_position: int | None) -> Build:
        p = r.provenance
        return cls(
            id=r.id, status=r.status, created_at=r.created_at, builder_id=r.options.builder_id,
            builder_instance_id=r.builder_instance_id, queue_position=queue_position,
            image_digest=r.image_digest, image_ref=r.image_ref, error=r.error,
            provenance=BuildProvenance(
                base_image_digest=p.base_image_digest, source_hash=p.source_hash,
                buildkit_version=p.builder_version, timestamp=p.timestamp,
            ) if p is not None else None,
            started_at=r.started_at, completed_at=r.completed_at, duration_ms=r.duration_ms,
            tags=r.tags or None,
        )  # fmt: skip


class Builder(BaseModel):
    id: str
    status: BuilderStatus
    created_at: datetime
    disk_size_gb: int
    max_concurrency: int = Field(description="Builds at once on this builder: always 1")
    queued_builds: list[str] = Field(description="Waiting build ids, oldest first")
    active_build_id: Omitted[str] = None
    last_used_at: Omitted[datetime] = None
    name: Omitted[str] = None
    tags: Omitted[dict[str, str]] = None

    @classmethod
    def of(cls, r: BuilderRecord, queued: list[str], active: str | None) -> Builder:
        return cls(
            id=r.id, status=r.status, created_at=r.created_at, disk_size_gb=r.disk_size_gb,
            max_concurrency=1, queued_builds=queued, active_build_id=active,
            last_used_at=r.last_used_at, name=r.name or None, tags=r.tags or None,
        )  # fmt: skip


class CreateBuilderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: StrictStr | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    name: StrictStr | None = Field(default=None, max_length=255)
    disk_size_gb: StrictInt | None = Field(default=None, ge=1, le=1024)
    tags: dict[StrictStr, StrictStr] | None = None
