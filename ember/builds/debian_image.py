"""Ember's own Debian images in its registry: a cached debootstrap layer (`rootfs.py`) as
an OCI image `ember/<recipe>:<key>`, converted like any pushed image. Made once per data
dir from the layer cached under the system dir: the builder VM's image, and the bases of
the Dockerfiles Ember writes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path

from ember.builds.rootfs import Recipe, debian_layer
from ember.errors import NotFound, Unavailable
from ember.images.manager import ImageManager
from ember.images.models import ImageStatus
from ember.registry import RegistryService

__all__ = ["ensure_debian_image"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
READY_WAIT_SECONDS = 600.0  # converting ~250 MB to erofs on a busy host


async def ensure_debian_image(
    images: ImageManager, registry: RegistryService, recipe: Recipe, *, host: str,
    cache_dir: Path, mirror: str,
) -> str:  # fmt: skip
    """The recipe's image name in Ember (`host/ember/<recipe>:<key>`), ready."""
    layer = await debian_layer(cache_dir, mirror, recipe)
    repository = f"ember/{recipe.name}"
    name = f"{host}/{repository}:{layer.key}"
    try:
        ready = images.get(name).status == ImageStatus.READY
    except NotFound:
        ready = False
    if not ready:
        await asyncio.to_thread(_store_layer, registry, layer.tar, layer.digest)
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": list(recipe.cmd), "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            "history": [{"created_by": f"debootstrap {recipe.name} (ember)"}],
        }).encode()  # fmt: skip
        config_digest = _put(registry, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer.digest, "size": layer.size}],
        }).encode()  # fmt: skip
        registry.push_manifest(host, repository, layer.key, manifest, OCI_MANIFEST)
    await images.wait_ready(name, READY_WAIT_SECONDS)
    record = images.get(name)
    if record.status != ImageStatus.READY:
        raise Unavailable(f"image {name} could not be converted: {record.error}")
    return name


def _put(registry: RegistryService, data: bytes) -> str:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    registry.storage.blobs.put_bytes(data, digest)
    return digest


def _store_layer(registry: RegistryService, tar: Path, digest: str) -> None:
    blobs = registry.storage.blobs
    if blobs.has(digest):
        return
    scratch = blobs.scratch_dir()
    try:
        copy = scratch / "layer.tar"
        try:
            os.link(tar, copy)  # same filesystem: no copy of a few hundred MB
        except OSError:
            shutil.copyfile(tar, copy)
        blobs.adopt(copy, digest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
