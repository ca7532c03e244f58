"""Image answers, built from the stored records field by field."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from ember.api.schemas.base import Omitted
from ember.images.distribution import Credentials
from ember.images.models import BuildProgress, ImageRecord, ImageStatus


class Image(BaseModel):
    name: str = Field(description="Normalized OCI image reference (tag or digest)")
    digest: str = Field(description="Resolved manifest digest (empty until resolved)")
    status: ImageStatus
    created_at: datetime
    platform: Omitted[str] = None  # known once the manifest is read
    error: str | None = None
    queue_position: int | None = None
    size_bytes: int | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: Omitted[dict[str, str]] = None
    working_dir: str | None = None
    tags: dict[str, str]
    progress: BuildProgress | None = Field(
        default=None,
        description="Ember extension: how far a pull or conversion has got "
        "(null unless the status is pulling or converting)",
    )

    @classmethod
    def of(
        cls, r: ImageRecord, queue_position: int | None, progress: BuildProgress | None
    ) -> Image:
        return cls(
            name=r.name,
            digest=r.digest,
            status=r.status,
            created_at=r.created_at,
            platform=r.platform,
            error=r.error,
            queue_position=queue_position,
            size_bytes=r.size_bytes,
            entrypoint=r.entrypoint,
            cmd=r.cmd,
            env=r.env,
            working_dir=r.working_dir,
            tags=r.tags,
            progress=progress,
        )


class PushCredentials(BaseModel):
    """Registry credentials borrowed for one pull or push (memory only, never stored)."""

    username: str | None = None
    password: str | None = None
    registry_token: str | None = None

    def borrowed(self) -> Credentials | None:
        """The credentials to send; None when empty (the server's own are used)."""
        if not (self.username or self.registry_token):
            return None
        return Credentials(
            username=self.username, password=self.password, token=self.registry_token
        )


class CreateImageRequest(BaseModel):
    name: str = Field(min_length=1, description="OCI image reference, e.g. alpine:3.20")
    platform: str | None = Field(default=None, description="os/arch[/variant]")
    tags: dict[str, str] | None = None
    credentials: PushCredentials | None = None


class TagImageRequest(BaseModel):
    target: str = Field(min_length=1, description="Reference the new tag should have")
