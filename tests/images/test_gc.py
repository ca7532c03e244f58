"""Blob garbage collection: deleting images (and failed pulls) frees the blobs nothing needs.

End to end through a real server for the everyday cases; in-process for the
races (a pull relying on a cached layer, a push that has sent blobs but not
yet its manifest), where `GatedProxy` holds a pull at a known point and the
registry's grace period is set by hand instead of waited for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from hypeman import Hypeman

from ember.images.blobs import BlobStore
from ember.images.manager import ImageManager
from ember.images.models import IN_PROGRESS, ImageRecord
from ember.instances.usage import digest_users
from ember.registry import Registry
from ember.store import Store
from ember.testkit import build_image, busybox_layer, push
from ember.testkit.ember_server import EmberServer
from ember.testkit.image import BuiltImage, file
from ember.testkit.registry_server import RegistryServer
from tests.conftest import wait_image
from tests.images.conftest import GatedProxy

pytestmark = pytest.mark.server  # starts a real `ember serve`


def on_base(marker: str) -> BuiltImage:
    """busybox (the shared base layer) plus one layer of its own."""
    return build_image([busybox_layer(), {marker: file(os.urandom(64 * 1024))}], cmd=["/bin/sh"])


def base_layer(image: BuiltImage) -> str:
    return str(json.loads(image.manifest)["layers"][0]["digest"])


def every_blob(image: BuiltImage) -> set[str]:
    """Manifest, config and layers: what a pull leaves in the store."""
    return {image.digest, *image.blobs}


def stored(data_dir: Path) -> set[str]:
    return {"sha256:" + p.name for p in (data_dir / "blobs" / "sha256").iterdir()}


@pytest.fixture
def client(ember_server: EmberServer) -> Hypeman:
    return Hypeman(base_url=ember_server.url, api_key=ember_server.token(), max_retries=0)


def test_deleting_images_frees_what_only_they_used(
    ember_server: EmberServer, client: Hypeman, registry: RegistryServer
) -> None:
    first, second = on_base("first"), on_base("second")
    assert base_layer(first) == base_layer(second)
    names = []
    for image, repository in ((first, "gc/first"), (second, "gc/second")):
        push(image, registry.url, repository, "v1")
        names.append(f"{registry.host}/{repository}:v1")
        client.images.create(name=names[-1])
        assert wait_image(ember_server, names[-1])["status"] == "ready"
    assert stored(ember_server.data_dir) == every_blob(first) | every_blob(second)

    client.images.delete(names[0])
    # The shared base layer stays with the image still using it; the rest of the first goes.
    assert stored(ember_server.data_dir) == every_blob(second)
    assert base_layer(first) in stored(ember_server.data_dir)

    client.images.delete(names[1])
    assert stored(ember_server.data_dir) == set()
    assert list((ember_server.data_dir / "images").iterdir()) == []


def test_a_tag_keeps_the_blobs_of_its_digest(
    ember_server: EmberServer, client: Hypeman, registry: RegistryServer
) -> None:
    image = on_base("tagged")
    push(image, registry.url, "gc/tagged", "v1")
    name = f"{registry.host}/gc/tagged:v1"
    client.images.create(name=name)
    assert wait_image(ember_server, name)["status"] == "ready"
    client.images.tag(name, target="local/alias:v1")
    client.images.delete(name)
    assert stored(ember_server.data_dir) == every_blob(image)
    client.images.delete("local/alias:v1")
    assert stored(ember_server.data_dir) == set()


def test_a_failed_pull_leaves_no_blobs(
    ember_server: EmberServer, client: Hypeman, registry: RegistryServer
) -> None:
    image = build_image(
        [busybox_layer(), {"data": file("precious bytes " * 1000)}], cmd=["/bin/sh"]
    )
    push(image, registry.url, "gc/broken", "v1")
    layer = json.loads(image.manifest)["layers"][1]["digest"]
    stored_layer = (
        registry.root / "data/docker/registry/v2/blobs/sha256" / layer[7:9] / layer[7:] / "data"
    )
    stored_layer.write_bytes(stored_layer.read_bytes()[:-10] + b"tampered!!")
    name = f"{registry.host}/gc/broken:v1"
    client.images.create(name=name)
    failed = wait_image(ember_server, name)
    assert failed["status"] == "failed" and "failed verification" in str(failed["error"])
    # Manifest, config and whatever layers arrived before the failure: all gone.
    assert stored(ember_server.data_dir) == set()


def test_pushed_blobs_stay_while_the_registry_holds_the_manifest(
    ember_server: EmberServer, client: Hypeman, registry: RegistryServer
) -> None:
    pushed = on_base("pushed")
    push(pushed, ember_server.url, "gc/pushed", "v1", token=ember_server.token())
    name = f"127.0.0.1:{ember_server.port}/gc/pushed:v1"
    assert wait_image(ember_server, name)["status"] == "ready"

    # Deleting the image (and collecting, by deleting another) leaves the pushed blobs.
    # (Here the grace period alone would keep them too; the in-process test below takes
    # it away to show the registry's manifest is what keeps them.)
    other = on_base("other")
    push(other, registry.url, "gc/other", "v1")
    other_name = f"{registry.host}/gc/other:v1"
    client.images.create(name=other_name)
    assert wait_image(ember_server, other_name)["status"] == "ready"
    client.images.delete(name)
    client.images.delete(other_name)
    assert stored(ember_server.data_dir) == every_blob(pushed)

    # The registry still serves the image, and pulling it again needs no push.
    http = httpx.Client(
        base_url=ember_server.url, headers={"Authorization": f"Bearer {ember_server.token()}"}
    )
    assert http.get("/v2/gc/pushed/manifests/v1").content == pushed.manifest
    client.images.create(name=name)
    assert wait_image(ember_server, name)["status"] == "ready"

    # Untagged from the registry and deleted: the blobs were pushed moments ago, within
    # the grace period a push in flight gets, so they stay until a later collection.
    assert http.delete(f"/v2/gc/pushed/manifests/{pushed.digest}").status_code == 202
    client.images.delete(name)
    assert stored(ember_server.data_dir) == every_blob(pushed) - {pushed.digest}


# ---- in-process: the races ---------------------------------------------------------------


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[tuple[ImageManager, Registry]]:
    """An image manager and a registry sharing one blob store, wired as the server does."""
    store = Store(tmp_path / "ember.db")
    blobs = BlobStore(tmp_path / "blobs")
    registry = Registry(store, blobs, tmp_path, hosts={"127.0.0.1:1"})
    images = ImageManager(
        store,
        tmp_path,
        blobs,
        local_registry=registry,
        digest_users=partial(digest_users, store),
    )
    await images.open()
    try:
        yield images, registry
    finally:
        await images.close()
        store.close()


async def settled(images: ImageManager, name: str) -> ImageRecord:
    deadline = time.monotonic() + 120  # only so a broken test cannot hang
    while (record := images.get(name)).status in IN_PROGRESS:
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.02)
    return record


async def downloading(images: ImageManager, name: str) -> None:
    deadline = time.monotonic() + 120
    while (progress := images.progress(images.get(name))) is None or (
        progress.phase != "downloading"
    ):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_a_pull_in_progress_keeps_the_cached_layer_it_relies_on(
    manager: tuple[ImageManager, Registry], registry: RegistryServer, gated: GatedProxy
) -> None:
    images, _ = manager
    first, second = on_base("first-race"), on_base("second-race")
    push(first, registry.url, "race/first", "v1")
    push(second, registry.url, "race/second", "v1")
    first_name, second_name = (f"{gated.host}/race/{n}:v1" for n in ("first", "second"))
    await images.create(first_name)
    gated.release(len(first.blobs))
    assert (await settled(images, first_name)).status == "ready"

    # The second pull found the base layer cached and is waiting for its own blobs...
    await images.create(second_name)
    await downloading(images, second_name)
    # ...when the only ready image using that layer is deleted: the layer must stay.
    images.delete(first_name)
    left = set(images.blobs.digests())
    assert base_layer(second) in left
    assert not (every_blob(first) - every_blob(second)) & left

    gated.release(len(second.blobs))
    assert (await settled(images, second_name)).status == "ready"
    assert base_layer(second) not in gated.served[len(first.blobs) :]  # never fetched again
    images.delete(second_name)
    assert images.blobs.digests() == []


def upload(registry: Registry, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    session = registry.start_upload()
    registry.append(session, data)
    registry.finish_upload(session, digest)
    return digest


async def test_a_push_in_flight_keeps_its_blobs_for_the_grace_period(
    manager: tuple[ImageManager, Registry],
) -> None:
    images, registry = manager
    image = on_base("pushed-race")
    for data in image.blobs.values():
        upload(registry, data)
    # Blobs are in, the manifest is not yet: a collection now must leave them.
    assert images.collect_garbage().blobs == 0
    assert set(images.blobs.digests()) == set(image.blobs)

    digest, _ = registry.put_manifest("race/pushed", "v1", image.manifest, image.media_type)
    images.import_pushed("127.0.0.1:1/race/pushed:v1", digest)
    assert (await settled(images, "127.0.0.1:1/race/pushed:v1")).status == "ready"

    registry.grace = 0  # as if the push were long past
    images.delete("127.0.0.1:1/race/pushed:v1")
    assert set(images.blobs.digests()) == every_blob(image)  # the registry holds the manifest
    registry.delete_manifest("race/pushed", "v1")
    assert images.collect_garbage().blobs == len(every_blob(image))
    assert images.blobs.digests() == []

    # An upload that never gets a manifest is collected once its grace is over.
    registry.grace = 3600
    orphan = upload(registry, b"never named")
    assert images.collect_garbage().blobs == 0 and images.blobs.has(orphan)
    registry.grace = 0
    assert images.collect_garbage().blobs == 1 and not images.blobs.has(orphan)


async def test_a_mounted_or_found_blob_counts_as_announced(
    manager: tuple[ImageManager, Registry],
) -> None:
    images, registry = manager
    found, mounted = b"found by HEAD", b"mounted from another repository"
    for data in (found, mounted):
        images.blobs.put_bytes(data, "sha256:" + hashlib.sha256(data).hexdigest())
    assert images.collect_garbage().blobs == 2  # nobody asked: garbage
    for data in (found, mounted):
        images.blobs.put_bytes(data, "sha256:" + hashlib.sha256(data).hexdigest())
    registry.blob_path("sha256:" + hashlib.sha256(found).hexdigest())
    assert registry.mount("sha256:" + hashlib.sha256(mounted).hexdigest())
    assert images.collect_garbage().blobs == 0


async def test_a_ready_image_whose_manifest_is_gone_stops_collection(
    manager: tuple[ImageManager, Registry],
) -> None:
    images, registry = manager
    image = on_base("lost-manifest")
    for data in image.blobs.values():
        upload(registry, data)
    digest, _ = registry.put_manifest("lost/manifest", "v1", image.manifest, image.media_type)
    images.import_pushed("127.0.0.1:1/lost/manifest:v1", digest)
    assert (await settled(images, "127.0.0.1:1/lost/manifest:v1")).status == "ready"
    registry.grace = 0
    registry.delete_manifest("lost/manifest", "v1")
    images.blobs.remove(digest)  # damage: which layers the image uses is now unknown
    stray = b"garbage"
    images.blobs.put_bytes(stray, "sha256:" + hashlib.sha256(stray).hexdigest())
    assert images.collect_garbage().blobs == 0  # collect nothing rather than guess
    assert set(images.blobs.digests()) == set(image.blobs) | {
        "sha256:" + hashlib.sha256(stray).hexdigest()
    }
