"""Builder templates: a builder VM booted once, saved when ready, cloned for every build.

A clone runs as its template was saved, memory and vCPUs included, so there is one
template per (builder image digest, memory_mb, cpus), made on the first build that asks
for it and kept (an Ember template, `ember/templates`). Its name carries all three:

    ember-builder-<digest 12 hex>-<memory>m-<cpus>c

A new builder image (a changed recipe, or the image re-imported) has a new digest, so
its builds get new templates; the old image's templates are deleted when the first new
one is made (one still mapped by a running clone stays until a later pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ember.errors import Conflict, NotFound
from ember.images.manager import ImageManager
from ember.instances.models import InstanceRecord
from ember.templates import Templates
from ember.templates.models import CreateTemplateRequest, Readiness

__all__ = ["PREFIX", "TEMPLATE_TAG", "BuilderTemplates", "template_name"]

log = logging.getLogger(__name__)

PREFIX = "ember-builder-"
TEMPLATE_TAG = "ember.builder-template"  # on the template's VMs and so on every clone
READY_TIMEOUT = "300s"  # a TCG boot on a busy host


def template_name(digest: str, memory_mb: int, cpus: int) -> str:
    return f"{PREFIX}{_short(digest)}-{memory_mb}m-{cpus}c"


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


class BuilderTemplates:
    def __init__(
        self, templates: Templates, images: ImageManager,
        builder_image: Callable[[], Awaitable[str]],
    ) -> None:  # fmt: skip
        self.templates, self.images, self._builder_image = templates, images, builder_image
        self._locks: dict[str, asyncio.Lock] = {}

    async def clone(self, name: str, memory_mb: int, cpus: int) -> InstanceRecord:
        """A builder VM Running as `name`, cloned from the template of these settings."""
        template = await self.ensure(memory_mb, cpus)
        return await self.templates.clone(template, name)

    async def ensure(self, memory_mb: int, cpus: int) -> str:
        """The template's id; made now (a cold boot and a save) if it does not exist."""
        image = await self._builder_image()
        digest = self.images.get(image).digest
        name = template_name(digest, memory_mb, cpus)
        async with self._locks.setdefault(name, asyncio.Lock()):  # one make per name
            with contextlib.suppress(NotFound):
                return self.templates.get(name).id
            await self._drop_stale(digest)
            request = CreateTemplateRequest(
                name=name, image=image, size=f"{memory_mb}MB", vcpus=cpus,
                cmd=["sleep", "infinity"],
                overlay_size="20GB",  # sparse: what RUN steps write outside the cache disk
                tags={TEMPLATE_TAG: _short(digest)},
                # buildah read once: its pages are in the saved guest's page cache.
                readiness=Readiness(exec=["buildah", "--version"], timeout=READY_TIMEOUT),
            )  # fmt: skip
            record = await self.templates.create(request)
            log.info("builder template %s (%s) made", name, record.id)
            return record.id

    async def _drop_stale(self, digest: str) -> None:
        """Templates of another builder image digest: the image changed since."""
        current = f"{PREFIX}{_short(digest)}-"
        for template in self.templates.all():
            name = template.name or ""
            if name.startswith(PREFIX) and not name.startswith(current):
                with contextlib.suppress(Conflict, NotFound):  # a clone still maps it
                    await self.templates.delete(template.id)
