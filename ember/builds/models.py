"""Stored build and builder records, and the options of one build."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from ember.store import StoredRecord

__all__ = [
    "DEFAULT_BUILDER",
    "TERMINAL",
    "BuildEvent",
    "BuildOptions",
    "BuildRecord",
    "BuildStatus",
    "BuilderRecord",
    "BuilderStatus",
    "Provenance",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class BuildStatus(StrEnum):
    """Hypeman's states: queued -> building -> pushing -> ready, or failed / cancelled."""

    QUEUED = "queued"
    BUILDING = "building"
    PUSHING = "pushing"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"


DEFAULT_BUILDER = "default"  # the builder of builds that name none (made on first use)
TERMINAL = frozenset({BuildStatus.READY, BuildStatus.FAILED, BuildStatus.CANCELLED})


class BuilderStatus(StrEnum):
    READY = "ready"
    PRUNING = "pruning"
    DELETING = "deleting"
    ERROR = "error"


class BuilderRecord(StoredRecord):
    """A builder: a persistent cache disk (an Ember volume) its builds run on, one at a
    time. `name` is a display name and need not be unique (the table allows that)."""

    disk_size_gb: int
    volume_id: str
    status: BuilderStatus = BuilderStatus.READY
    implicit: bool = False  # made for a build that named no builder; deleted with it
    tags: dict[str, str] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None


class Provenance(BaseModel):
    base_image_digest: str | None = None
    source_hash: str | None = None
    builder_version: str | None = None  # buildah's version (Hypeman: buildkit_version)
    timestamp: datetime | None = None


class BuildOptions(BaseModel):
    """What a build was asked for, validated (`ember.builds.request`)."""

    builder_id: str
    image_name: str  # repository[:tag] in Ember's registry
    dockerfile: str | None = None  # given in the request; else the archive's or generated
    timeout_seconds: int
    memory_mb: int
    cpus: int
    secret_ids: list[str] = Field(default_factory=list)
    base_image_digest: str | None = None


class BuildRecord(StoredRecord):
    """`name` is the id (builds have no names)."""

    options: BuildOptions
    status: BuildStatus = BuildStatus.QUEUED
    tags: dict[str, str] = Field(default_factory=dict)
    # Source without a Dockerfile: what Ember recognised ("python", "static") and the
    # Dockerfile it wrote, with {base} for its base image (`detect.py`).
    language: str | None = None
    generated_dockerfile: str | None = None
    builder_instance_id: str | None = None
    image_ref: str | None = None
    image_digest: str | None = None
    provenance: Provenance | None = None
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.completed_at is None:
            return None
        return int((self.completed_at - self.started_at).total_seconds() * 1000)


class BuildEvent(BaseModel):
    """One line of a build's event log (Hypeman's BuildEvent)."""

    type: str  # log | status | heartbeat
    timestamp: datetime = Field(default_factory=utcnow)
    content: str | None = None
    status: BuildStatus | None = None
