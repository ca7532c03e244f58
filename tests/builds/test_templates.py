"""Builder templates without VMs: one per (image digest, memory, cpus), made once even when
builds ask at the same time, re-made for a new builder image (the old image's dropped,
unless a clone still maps it). The VM tests boot the real ones."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from ember.builds.templates import TEMPLATE_TAG, BuilderTemplates, template_name
from ember.errors import Conflict, NotFound
from ember.templates.models import CreateTemplateRequest


class FakeTemplates:
    """Templates by name; `create` yields once (a boot takes a while), `in_use` refuse delete."""

    def __init__(self) -> None:
        self.made: list[CreateTemplateRequest] = []
        self.by_name: dict[str, SimpleNamespace] = {}
        self.in_use: set[str] = set()

    def all(self) -> list[SimpleNamespace]:
        return list(self.by_name.values())

    def get(self, ref: str) -> SimpleNamespace:
        if ref not in self.by_name:
            raise NotFound(f"template {ref!r} not found")
        return self.by_name[ref]

    async def create(self, request: CreateTemplateRequest) -> SimpleNamespace:
        await asyncio.sleep(0.01)
        self.made.append(request)
        record = SimpleNamespace(id=f"id-{request.name}", name=request.name)
        self.by_name[request.name] = record
        return record

    async def delete(self, ref: str) -> None:
        name = ref.removeprefix("id-")
        if name in self.in_use:
            raise Conflict("in use", code="in_use")
        del self.by_name[name]


def builder_templates(templates: FakeTemplates, digest: list[str]) -> BuilderTemplates:
    images = SimpleNamespace(get=lambda name: SimpleNamespace(digest=digest[0]))

    async def builder_image() -> str:
        return "127.0.0.1:4973/ember/builder:k"

    return BuilderTemplates(cast(Any, templates), cast(Any, images), builder_image)


async def test_one_template_per_settings_made_once() -> None:
    templates, digest = FakeTemplates(), ["sha256:" + "a" * 64]
    subject = builder_templates(templates, digest)
    ids = await asyncio.gather(*(subject.ensure(1024, 2) for _ in range(3)))
    assert len(set(ids)) == 1 and len(templates.made) == 1
    request = templates.made[0]
    assert request.name == "ember-builder-aaaaaaaaaaaa-1024m-2c"
    assert (request.size, request.vcpus, request.tags) == ("1024MB", 2, {TEMPLATE_TAG: "a" * 12})
    await subject.ensure(2048, 1)  # other settings: another template, the first one kept
    assert sorted(templates.by_name) == [template_name(digest[0], 1024, 2),
                                         template_name(digest[0], 2048, 1)]  # fmt: skip


async def test_a_new_builder_image_replaces_the_old_templates() -> None:
    templates, digest = FakeTemplates(), ["sha256:" + "a" * 64]
    subject = builder_templates(templates, digest)
    await subject.ensure(1024, 2)
    await subject.ensure(2048, 2)
    templates.in_use.add(template_name(digest[0], 2048, 2))  # a clone still runs
    digest[0] = "sha256:" + "b" * 64
    await subject.ensure(1024, 2)
    assert sorted(templates.by_name) == [template_name("sha256:" + "a" * 64, 2048, 2),
                                         template_name(digest[0], 1024, 2)]  # fmt: skip
    templates.in_use.clear()
    await subject.ensure(4096, 2)  # the next make drops what is no longer in use
    assert sorted(templates.by_name) == [template_name(digest[0], 1024, 2),
                                         template_name(digest[0], 4096, 2)]  # fmt: skip
