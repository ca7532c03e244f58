"""What a template is asked to be: an instance's create request, and when it is ready."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ember.instances.request import CreateInstanceRequest

__all__ = ["CreateTemplateRequest", "Readiness"]


class Readiness(BaseModel):
    """When the booted VM is ready to be saved: the guest agent is up (always), and then,
    if given, `exec` exits 0 in the guest (tried every `interval` until `timeout`)."""

    model_config = ConfigDict(extra="forbid")

    exec: list[StrictStr] | None = Field(
        default=None, min_length=1, description="A command that exits 0 once the VM is ready"
    )
    timeout: StrictStr = Field(default="120s", description="Go duration")
    interval: StrictStr = Field(default="500ms", description="Go duration")


class CreateTemplateRequest(CreateInstanceRequest):
    """An instance's create request (`name` is the template's), plus its readiness."""

    readiness: Readiness | None = None
