"""The pull pipeline module by module (fetch, convert) against Debian's docker-registry."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ember.images.blobs import BlobStore
from ember.images.distribution import Credentials, RegistryClient, RegistryError
from ember.images.pull import ROOTFS_NAME, Layer, PulledImage, convert, fetch, load_local
from ember.images.reference import parse_reference
from ember.images.unpack import UnsafeLayer
from ember.testkit import (
    build_image,
    build_index,
    busybox_layer,
    hello_image,
    padded_image,
    push,
)
from ember.testkit.image import BuiltImage, file, multilayer_image
from ember.testkit.registry_server import RegistryServer
from tests.images.conftest import PASSWORD, USER, TokenService

AMD64 = "linux/amd64"


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


async def pull(
    name: str,
    blobs: BlobStore,
    platform: str = AMD64,
    *,
    credentials: Credentials | None = None,
    docker_config: Path | None = None,
) -> PulledImage:
    async with RegistryClient(credentials=credentials, docker_config=docker_config) as client:
        return await fetch(parse_reference(name), client, blobs, platform)


def extract(rootfs: Path, out: Path) -> Path:
    subprocess.run(["fsck.erofs", f"--extract={out}", str(rootfs)], check=True, capture_output=True)
    return out


def erofs_inode(rootfs: Path, path: str) -> str:
    info = subprocess.run(
        ["dump.erofs", f"--path={path}", str(rootfs)], check=True, capture_output=True, text=True
    ).stdout
    return next(line.split()[1] for line in info.splitlines() if line.startswith("NID:"))


def erofs_compressed(rootfs: Path) -> bool:
    info = subprocess.run(["dump.erofs", "-s", str(rootfs)], check=True, capture_output=True,
                          text=True).stdout  # fmt: skip
    return "0padding" in info  # the on-disk feature lz4 extents need


async def test_multilayer_fetch_and_convert(
    registry: RegistryServer, blobs: BlobStore, tmp_path: Path
) -> None:
    image = multilayer_image(env={"A": "1", "B": "x=y"}, working_dir="/app", user="1000:1000")
    push(image, registry.url, "fetch/multi", "v1")
    ref = parse_reference(f"{registry.host}/fetch/multi:v1")
    seen: list[tuple[str, int | None, int | None]] = []
    async with RegistryClient() as client:
        pulled = await fetch(ref, client, blobs, AMD64, lambda *step: seen.append(step))
    assert pulled.digest == image.digest and pulled.platform == AMD64
    assert pulled.cmd == ["/bin/cat", "/app/config"] and pulled.entrypoint is None
    assert (pulled.env, pulled.working_dir, pulled.user) == (
        {"A": "1", "B": "x=y"}, "/app", "1000:1000",
    )  # fmt: skip
    assert len(pulled.layers) == 3 and pulled.size == sum(
        len(image.blobs[x.digest]) for x in pulled.layers
    )
    # Progress counts the config and the layers, from nothing to all of them.
    assert image.size == len(image.blobs[pulled.config_digest]) + pulled.size
    assert seen[0] == ("downloading", 0, image.size)
    assert seen[-1] == ("downloading", image.size, image.size)
    done = [step[1] or 0 for step in seen]
    assert done == sorted(done) and len(set(done)) > 2
    assert all(blobs.has(layer.digest) for layer in pulled.layers)

    # Pulled again: every layer is already here, nothing is downloaded, all counts as done.
    again: list[tuple[str, int | None, int | None]] = []
    async with RegistryClient() as client:
        await fetch(ref, client, blobs, AMD64, lambda *step: again.append(step))
    assert again and set(again) == {("downloading", image.size, image.size)}

    image_dir = tmp_path / "images" / pulled.digest
    steps: list[tuple[str, int | None, int | None]] = []
    size = convert(pulled, blobs, image_dir, lambda *step: steps.append(step))
    assert size == (image_dir / ROOTFS_NAME).stat().st_size
    # Unpacking counts the layer bytes read, from none to all; building measures nothing.
    assert steps[0] == ("unpacking", 0, pulled.size)
    unpacked = [step for step in steps if step[0] == "unpacking"]
    assert unpacked[-1] == ("unpacking", pulled.size, pulled.size)
    read = [step[1] or 0 for step in unpacked]
    assert read == sorted(read) and len(set(read)) > len(pulled.layers) + 1  # within layers too
    assert steps[-1] == ("building", None, None) and steps[len(unpacked)] == steps[-1]
    assert os.listdir(image_dir) == [ROOTFS_NAME]
    assert erofs_compressed(image_dir / ROOTFS_NAME)
    assert os.listdir(blobs.tmp_dir) == []  # the unpacked tree is gone
    root = extract(image_dir / ROOTFS_NAME, tmp_path / "out")
    assert (root / "app/config").read_text() == "v2"
    assert not (root / "app/old").exists()
    assert os.listdir(root / "cache") == ["fresh"]
    assert os.readlink(root / "app/link") == "config"
    assert os.stat(root / "app/config").st_uid == 1000
    assert oct(os.stat(root / "app/config").st_mode & 0o777) == oct(0o640)
    # fsck.erofs extracts hard links as copies: ask the filesystem itself.
    assert erofs_inode(image_dir / ROOTFS_NAME, "/app/hard") == erofs_inode(
        image_dir / ROOTFS_NAME, "/bin/busybox"
    )
    assert os.readlink(root / "bin/sh") == "busybox"


async def test_index_chooses_the_platform(registry: RegistryServer, blobs: BlobStore) -> None:
    amd = hello_image()
    arm = build_image([busybox_layer(), {"arm": file("arm")}], architecture="arm64")
    index = build_index({"amd64": amd, "arm64": arm})
    push(index, registry.url, "fetch/index", "v1")
    name = f"{registry.host}/fetch/index:v1"
    default = await pull(name, blobs)
    assert (default.digest, default.platform, default.cmd) == (index.digest, AMD64, ["/hello"])
    assert [x.digest for x in default.layers] == [
        x["digest"] for x in json.loads(amd.manifest)["layers"]
    ]
    arm_pulled = await pull(name, blobs, "linux/arm64")
    assert arm_pulled.platform == "linux/arm64"
    with pytest.raises(
        RegistryError,
        match=r"no manifest for platform linux/s390x \(available: linux/amd64, linux/arm64\)",
    ):
        await pull(name, blobs, "linux/s390x")


async def test_errors_are_plain_sentences(registry: RegistryServer, blobs: BlobStore) -> None:
    with pytest.raises(RegistryError) as missing:
        await pull(f"{registry.host}/no/such:tag", blobs)
    assert missing.value.message == (
        f"registry {registry.host}: manifest for no/such:tag not found (404)"
    )
    with pytest.raises(RegistryError) as unreachable:
        await pull("127.0.0.1:1/nothing:here", blobs)
    assert unreachable.value.message == "cannot reach registry 127.0.0.1:1: connection refused"


async def test_corrupted_blob_is_refused_and_nothing_kept(
    registry: RegistryServer, blobs: BlobStore
) -> None:
    image = build_image([{"data": file("precious " * 500)}], cmd=["/x"])
    push(image, registry.url, "fetch/corrupt", "v1")
    layer = json.loads(image.manifest)["layers"][0]["digest"]
    hex_digest = layer.split(":")[1]
    stored = (
        registry.root
        / "data/docker/registry/v2/blobs/sha256"
        / hex_digest[:2]
        / hex_digest
        / "data"
    )
    stored.write_bytes(stored.read_bytes()[:-4] + b"evil")
    with pytest.raises(RegistryError, match=f"blob {layer} failed verification"):
        await pull(f"{registry.host}/fetch/corrupt:v1", blobs)
    assert not blobs.has(layer)
    assert os.listdir(blobs.tmp_dir) == []


async def test_basic_auth(basic_registry: RegistryServer, blobs: BlobStore, tmp_path: Path) -> None:
    push(hello_image(), basic_registry.url, "fetch/private", "v1", basic=(USER, PASSWORD))
    name = f"{basic_registry.host}/fetch/private:v1"
    with pytest.raises(RegistryError, match=r"unauthorized \(401\)"):
        await pull(name, blobs, docker_config=tmp_path / "none.json")
    with pytest.raises(RegistryError, match=r"unauthorized \(401\)"):
        await pull(name, blobs, credentials=Credentials(USER, "wrong"))
    assert (await pull(name, blobs, credentials=Credentials(USER, PASSWORD))).cmd == ["/hello"]
    config = tmp_path / "config.json"
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    assert (await pull(name, BlobStore(tmp_path / "other"), docker_config=config)).cmd == ["/hello"]


async def test_bearer_token_flow(
    token_registry: tuple[RegistryServer, TokenService], blobs: BlobStore
) -> None:
    registry, tokens = token_registry
    image = hello_image()
    push(
        image,
        registry.url,
        "fetch/tokened",
        "v1",
        token=tokens.token("repository:fetch/tokened:pull,push"),
    )
    ref = parse_reference(f"{registry.host}/fetch/tokened:v1")
    tokens.requests.clear()
    async with RegistryClient(credentials=Credentials(USER, PASSWORD)) as client:
        await fetch(ref, client, blobs, AMD64)
        # One token for the manifest, the config and both layers: cached per scope.
        assert tokens.requests == [
            {"scope": ["repository:fetch/tokened:pull"], "service": ["ember-test"]}
        ]
        # An expired (here: bogus) cached token is answered by a fresh challenge.
        key = next(iter(client._tokens))
        client._tokens[key] = "Bearer expired"
        again = await client.get_manifest(ref)
        assert again.digest == image.digest and len(tokens.requests) == 2
    async with RegistryClient(credentials=Credentials(USER, "wrong")) as client:
        with pytest.raises(RegistryError, match=r"token service refused \(401\)"):
            await client.get_manifest(ref)


class FlakyRegistry(BaseHTTPRequestHandler):
    """Serves one image; the first blob requests fail with 503 + Retry-After: 0."""

    image: BuiltImage
    failures = 0

    def do_GET(self) -> None:
        cls = type(self)
        if "/blobs/" in self.path and cls.failures > 0:
            cls.failures -= 1
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        tail = self.path.rsplit("/", 1)[1]
        body = cls.image.manifest if "/manifests/" in self.path else cls.image.blobs.get(tail)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        media_type = (
            cls.image.media_type if "/manifests/" in self.path else "application/octet-stream"
        )
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[tuple[str, type[FlakyRegistry]]]:
    handler = type("Flaky", (FlakyRegistry,), {"image": hello_image(), "failures": 2})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()


async def test_server_errors_on_blobs_are_retried(
    flaky: tuple[str, type[FlakyRegistry]], blobs: BlobStore
) -> None:
    host, handler = flaky
    pulled = await pull(f"{host}/flaky/app:v1", blobs)
    assert handler.failures == 0 and all(blobs.has(x.digest) for x in pulled.layers)


def test_incompressible_images_skip_lz4(blobs: BlobStore, tmp_path: Path) -> None:
    image = padded_image(16 * 1024 * 1024, layers=2)
    for digest, data in {**image.blobs, image.digest: image.manifest}.items():
        blobs.put_bytes(data, digest)
    pulled = load_local(image.digest, blobs)
    size = convert(pulled, blobs, tmp_path / "image")
    assert size >= 16 * 1024 * 1024
    assert not erofs_compressed(tmp_path / "image" / ROOTFS_NAME)


def test_failed_conversion_leaves_nothing_ready(blobs: BlobStore, tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("../escape"), io.BytesIO(b""))
    good = gzip.compress(b"")  # an empty (but valid) layer first
    layers = []
    for data in (good, raw.getvalue()):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs.put_bytes(data, digest)
        layers.append(Layer(digest, "", len(data)))
    pulled = PulledImage("sha256:" + "0" * 64, AMD64, "", layers)
    image_dir = tmp_path / "images" / "x"
    with pytest.raises(UnsafeLayer, match="escapes"):
        convert(pulled, blobs, image_dir)
    assert not (image_dir / ROOTFS_NAME).exists()
    assert os.listdir(blobs.tmp_dir) == []


async def test_resolve_digest_heads_the_manifest_or_falls_back_to_get(
    registry: RegistryServer,
) -> None:
    index = build_index({"amd64": hello_image()})
    push(index, registry.url, "resolve/app", "v1")
    async with RegistryClient() as client:
        ref = parse_reference(f"{registry.host}/resolve/app:v1")
        assert await client.resolve_digest(ref, attempts=1) == index.digest  # the index's
        with pytest.raises(RegistryError, match="not found"):
            await client.resolve_digest(parse_reference(f"{registry.host}/resolve/app:no"))

    manifest = index.manifest

    class NoHead(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(405)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", index.media_type)
            self.send_header("Content-Length", str(len(manifest)))
            self.end_headers()
            self.wfile.write(manifest)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NoHead)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async with RegistryClient() as client:
            ref = parse_reference(f"127.0.0.1:{server.server_address[1]}/no/head:v1")
            assert await client.resolve_digest(ref, attempts=1) == index.digest
    finally:
        server.shutdown()
