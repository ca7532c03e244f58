"""What a push sends, read from the blob store (no registry needed)."""

from __future__ import annotations

import json
from pathlib import Path

from ember.images.blobs import BlobStore
from ember.pushes.upload import plan
from ember.testkit.image import BuiltImage, build_image, build_index, busybox_layer, file


def stored(tmp_path: Path, image: BuiltImage) -> BlobStore:
    blobs = BlobStore(tmp_path / "blobs")
    for digest, data in image.blobs.items():
        blobs.put_bytes(data, digest)
    blobs.put_bytes(image.manifest, image.digest)
    return blobs


def test_a_manifest_is_sent_as_stored_with_its_blobs(tmp_path: Path) -> None:
    image = build_image([busybox_layer(), {"etc/motd": file("hi\n")}, {"etc/motd": file("hi\n")}])
    sent = plan(stored(tmp_path, image), image.digest, "linux/amd64")
    manifest = json.loads(image.manifest)
    assert (sent.digest, sent.body, sent.media_type) == (image.digest, image.manifest,
                                                         image.media_type)  # fmt: skip
    assert next(iter(sent.blobs)) == manifest["config"]["digest"]  # the config goes first
    assert set(sent.blobs) == set(image.blobs)  # a layer listed twice is sent once
    assert sent.layers == 3
    assert sent.layer_bytes == sum(layer["size"] for layer in manifest["layers"][:2])


def test_an_index_sends_the_platform_s_manifest(tmp_path: Path) -> None:
    amd64 = build_image([busybox_layer()])
    arm64 = build_image([{"etc/arch": file("arm64\n")}], architecture="arm64")
    index = build_index({"amd64": amd64, "arm64": arm64})
    sent = plan(stored(tmp_path, index), index.digest, "linux/arm64")
    assert (sent.digest, sent.body) == (arm64.digest, arm64.manifest)
    assert set(sent.blobs) == set(arm64.blobs)
