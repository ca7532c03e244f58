"""The pull pipeline: resolve a manifest, fetch what is missing, convert to a root disk.

`fetch` talks to a registry; `load_local` reads a manifest pushed into the
built-in registry; both give a `PulledImage`, and `convert` turns that into
`<image_dir>/rootfs.erofs`. Layers already in the blob store are never
downloaded again, and a conversion works in a scratch directory, so a failure
leaves no file that looks ready.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ember.errors import EmberError
from ember.images.blobs import BlobStore
from ember.images.distribution import INDEX_TYPES, Manifest, RegistryClient, RegistryError
from ember.images.models import BuildPhase
from ember.images.reference import ImageRef
from ember.images.rootfs import build_rootfs
from ember.images.unpack import unpack_layers

ROOTFS_NAME = "rootfs.erofs"
PARALLEL_DOWNLOADS = 4
# Layers that gzip/zstd shrank by less than this are mostly compressed data already
# (media, archives, weights): lz4 will not shrink them either.
INCOMPRESSIBLE_RATIO = 0.9

StepProgress = Callable[[BuildPhase, int | None, int | None], None]
"""Called with (phase, bytes done, bytes in all) as work advances: `downloading`
counts the config and layers in the store (cached ones from the start),
`unpacking` the layer bytes read, `building` measures nothing (None, None)."""
Keep = Callable[[str], None]
"""Called with each digest a pull is about to rely on, before it looks for it in
the store: the garbage collector keeps these until the pull ends."""


@dataclass(frozen=True)
class Layer:
    digest: str
    media_type: str
    size: int | None


@dataclass
class PulledImage:
    digest: str  # the digest images are known by: the index's, if the reference named one
    platform: str
    config_digest: str
    layers: list[Layer]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    user: str | None = None

    @property
    def size(self) -> int:
        return sum(layer.size or 0 for layer in self.layers)


def _platform_of(entry: dict[str, Any]) -> str:
    plat = entry.get("platform") or {}
    text = f"{plat.get('os', '?')}/{plat.get('architecture', '?')}"
    return f"{text}/{plat['variant']}" if plat.get("variant") else text


def select_platform(index: dict[str, Any], platform: str) -> dict[str, Any]:
    """The index entry for `platform` (os/arch[/variant]); a missing variant matches any."""
    wanted = platform.split("/")
    entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    for entry in entries:
        have = _platform_of(entry).split("/")
        if have[:2] == wanted[:2] and (len(wanted) < 3 or have[2:3] == wanted[2:3]):
            return entry
    available = ", ".join(sorted({_platform_of(e) for e in entries})) or "none"
    raise RegistryError(f"no manifest for platform {platform} (available: {available})")


def _image_config(config: dict[str, Any]) -> dict[str, Any]:
    settings = config.get("config") or {}
    env = {}
    for item in settings.get("Env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    return {
        "entrypoint": settings.get("Entrypoint") or None,
        "cmd": settings.get("Cmd") or None,
        "env": env,
        "working_dir": settings.get("WorkingDir") or None,
        "user": settings.get("User") or None,
    }


def _describe(
    digest: str, manifest: dict[str, Any], config: dict[str, Any], platform: str
) -> PulledImage:
    layers = [
        Layer(str(layer["digest"]), str(layer.get("mediaType", "")), layer.get("size"))
        for layer in manifest.get("layers", [])
    ]
    arch = f"{config.get('os', 'linux')}/{config.get('architecture', 'amd64')}"
    if config.get("variant"):
        arch += f"/{config['variant']}"
    return PulledImage(
        digest=digest,
        platform=arch or platform,
        config_digest=str(manifest["config"]["digest"]),
        layers=layers,
        **_image_config(config),
    )


async def fetch(
    ref: ImageRef,
    client: RegistryClient,
    blobs: BlobStore,
    platform: str,
    progress: StepProgress | None = None,
    keep: Keep | None = None,
) -> PulledImage:
    """Resolve `ref` and download its config and missing layers into `blobs`."""
    keep = keep or _keep_nothing
    top = await client.get_manifest(ref)
    keep(top.digest)
    blobs.put_bytes(top.body, top.digest)
    manifest = top
    if top.media_type in INDEX_TYPES:
        entry = select_platform(top.json(), platform)
        manifest = await client.get_manifest(ref, str(entry["digest"]))
        keep(manifest.digest)
        blobs.put_bytes(manifest.body, manifest.digest)
    body = manifest.json()
    config_desc = body.get("config") or {}
    if "digest" not in config_desc:
        raise RegistryError(f"manifest {manifest.digest} has no config")
    config_digest = str(config_desc["digest"])
    # A digest listed twice (empty layers often are) is downloaded, and counted, once.
    wanted = {config_digest: config_desc.get("size")}
    for layer in body.get("layers", []):
        wanted.setdefault(str(layer["digest"]), layer.get("size"))
    for digest in wanted:
        keep(digest)  # before looking: a blob found here must still be here when used
    counter = _ByteCounter(progress, {d: s for d, s in wanted.items() if blobs.has(d)}, wanted)
    await client.fetch_blob(ref, config_digest, blobs, config_desc.get("size"), counter.advance)
    config = blobs.read_json(config_digest)
    pulled = _describe(top.digest, body, config, platform)
    await _fetch_layers(ref, client, blobs, pulled.layers, counter.advance)
    counter.finish()  # everything is here now, some of it perhaps fetched by another pull
    return pulled


def _keep_nothing(_digest: str) -> None:
    pass


class _ByteCounter:
    """Bytes of an image's config and layers in the store, out of all it needs."""

    def __init__(
        self,
        progress: StepProgress | None,
        present: dict[str, int | None],
        wanted: dict[str, int | None],
    ) -> None:
        self.progress = progress
        self.total = sum(size or 0 for size in wanted.values())
        self.done = sum(size or 0 for size in present.values())
        self.report()

    def advance(self, count: int) -> None:
        self.done += count  # negative when a failed attempt is rolled back
        self.report()

    def finish(self) -> None:
        self.done = self.total
        self.report()

    def report(self) -> None:
        if self.progress:
            self.progress("downloading", max(0, min(self.done, self.total)), self.total)


async def _fetch_layers(
    ref: ImageRef,
    client: RegistryClient,
    blobs: BlobStore,
    layers: list[Layer],
    advance: Callable[[int], None],
) -> None:
    missing = {layer.digest: layer for layer in layers if not blobs.has(layer.digest)}
    limit = asyncio.Semaphore(PARALLEL_DOWNLOADS)

    async def one(layer: Layer) -> None:
        async with limit:
            await client.fetch_blob(ref, layer.digest, blobs, layer.size, advance)

    tasks = [asyncio.ensure_future(one(layer)) for layer in missing.values()]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        # The first failure ends the pull: stop the other downloads (their temp files go).
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def load_local(digest: str, blobs: BlobStore, platform: str = "linux/amd64") -> PulledImage:
    """Describe a manifest (or index) that is already in the blob store, e.g. a pushed one."""
    top = Manifest(digest, "", blobs.path(digest).read_bytes())
    body = top.json()
    manifest_body = body
    if str(body.get("mediaType", "")) in INDEX_TYPES or "manifests" in body:
        entry = select_platform(body, platform)
        manifest_body = blobs.read_json(str(entry["digest"]))
    config = blobs.read_json(str(manifest_body["config"]["digest"]))
    pulled = _describe(digest, manifest_body, config, platform)
    missing = [layer.digest for layer in pulled.layers if not blobs.has(layer.digest)]
    if missing:
        raise EmberError(f"image {digest} is missing layers: {', '.join(missing)}")
    return pulled


def convert(
    pulled: PulledImage, blobs: BlobStore, image_dir: Path, progress: StepProgress | None = None
) -> int:
    """Unpack the layers and build `image_dir/rootfs.erofs`; return its size in bytes."""
    work = blobs.scratch_dir()
    try:
        tree = work / "rootfs"
        paths = [blobs.path(layer.digest) for layer in pulled.layers]
        total = sum(path.stat().st_size for path in paths)

        def unpacked(done: int) -> None:
            if progress:
                progress("unpacking", min(done, total), total)

        unpacked(0)
        stats = unpack_layers(paths, tree, unpacked)
        if progress:
            progress("building", None, None)
        staged = work / ROOTFS_NAME
        # Uncompressed layers say nothing about compressibility: then compress.
        worth_it = stats.compressed < INCOMPRESSIBLE_RATIO * stats.expanded or not stats.expanded
        build_rootfs(tree, staged, compress=worth_it)
        image_dir.mkdir(parents=True, exist_ok=True)
        staged.replace(image_dir / ROOTFS_NAME)
        return (image_dir / ROOTFS_NAME).stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
