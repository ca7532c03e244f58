"""The push pipeline: the blobs of one manifest from the blob store to another registry.

Blobs go first (config, then each distinct layer), each only if the target does not
hold it yet, then the manifest under the target's tag, exactly the bytes stored, so
the target's digest is the one Ember knows the manifest by.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ember.errors import EmberError
from ember.images.blobs import BlobStore
from ember.images.distribution import INDEX_TYPES, RegistryClient, RegistryError
from ember.images.pull import select_platform
from ember.images.reference import ImageRef

CHUNK = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

Advance = Callable[[str, int], None]
"""Called with (digest, bytes of it the target holds so far); 0 again when an attempt
starts over, so a retried upload is not counted twice."""


@dataclass(frozen=True)
class Plan:
    """What a push sends: one manifest and the blobs it names (digest -> size)."""

    digest: str
    media_type: str
    body: bytes
    blobs: dict[str, int]
    layers: int

    @property
    def total(self) -> int:
        return sum(self.blobs.values())

    @property
    def layer_bytes(self) -> int:
        return self.total - next(iter(self.blobs.values()))  # all but the config


def plan(blobs: BlobStore, digest: str, platform: str) -> Plan:
    """The manifest to push for the image stored as `digest`: itself, or for an index
    the one manifest of `platform` (Ember pulls only that one's layers)."""
    body = blobs.path(digest).read_bytes()
    manifest = _object(body, digest)
    if str(manifest.get("mediaType", "")) in INDEX_TYPES or "manifests" in manifest:
        digest = str(select_platform(manifest, platform)["digest"])
        body = blobs.path(digest).read_bytes()
        manifest = _object(body, digest)
    config = manifest.get("config") or {}
    if "digest" not in config:
        raise EmberError(f"manifest {digest} has no config")
    sizes = {str(config["digest"]): blobs.size(str(config["digest"]))}  # the config first
    layers = manifest.get("layers") or []
    for layer in layers:
        sizes.setdefault(str(layer["digest"]), blobs.size(str(layer["digest"])))
    media_type = str(manifest.get("mediaType") or OCI_MANIFEST)
    return Plan(digest, media_type, body, sizes, len(layers))


def _object(body: bytes, digest: str) -> dict[str, Any]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise EmberError(f"manifest {digest} is not a JSON object")
    return value


async def push(
    client: RegistryClient, blobs: BlobStore, what: Plan, target: ImageRef, advance: Advance
) -> str:
    """Send `what` to `target`; return the manifest digest the target answers with."""
    for digest, size in what.blobs.items():
        if await client.has_blob(target, digest):
            advance(digest, size)
            continue
        body = partial(_read, blobs.path(digest), digest, advance)
        await client.upload_blob(target, digest, size, body)
    answered = await client.put_manifest(target, what.media_type, what.body)
    if answered and answered != what.digest:
        raise RegistryError(
            f"registry {target.registry}: stored the manifest as {answered}, not {what.digest}"
        )
    return what.digest


async def _read(path: Path, digest: str, advance: Advance) -> AsyncIterator[bytes]:
    """A blob's bytes as an upload body, reported as they go; read off the event loop."""
    sent = 0
    advance(digest, 0)
    with path.open("rb") as file:
        while chunk := await asyncio.to_thread(file.read, CHUNK):
            yield chunk
            sent += len(chunk)
            advance(digest, sent)
