"""Blob uploads of the built-in registry: chunk ranges, and abandoned uploads expiring."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from ember.images.blobs import BlobStore
from ember.images.manager import ImageManager
from ember.instances.usage import digest_users
from ember.registry import DistributionError, Registry, RegistryService, parse_content_range
from ember.store import Store
from ember.testkit.ember_server import EmberServer
from tests.conftest import scratch_dir

pytestmark = pytest.mark.server  # starts a real `ember serve`

# ---- in-process ------------------------------------------------------------------------


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RegistryService]:
    """The registry wired as the server wires it, with uploads expiring after 0.2 s."""
    store = Store(tmp_path / "ember.db")
    blobs = BlobStore(tmp_path / "blobs")
    storage = Registry(store, blobs, tmp_path, hosts={"127.0.0.1:1"})
    images = ImageManager(
        store, tmp_path, blobs, local_registry=storage, digest_users=partial(digest_users, store)
    )
    registry = RegistryService(storage, images, upload_max_age=0.2)
    try:
        yield registry
    finally:
        await registry.close()
        store.close()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0-2", (0, 2)), ("5-5", (5, 5)), ("bytes 0-2/3", (0, 2)), ("bytes=3-9/*", (3, 9))],
)
def test_content_range_forms_accepted(value: str, expected: tuple[int, int]) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize("value", ["x-y", "0-", "-2", "0-2-4", "bytes 0-2/x", "1" * 30 + "-2"])
def test_malformed_content_range_is_a_400(value: str) -> None:
    with pytest.raises(DistributionError) as caught:
        parse_content_range(value)
    assert caught.value.status == 400 and caught.value.oci_code == "BLOB_UPLOAD_INVALID"
    assert "Content-Range" in caught.value.message


def test_backwards_content_range_is_a_416() -> None:
    with pytest.raises(DistributionError) as caught:
        parse_content_range("5-2")
    assert caught.value.status == 416


async def test_chunks_must_continue_the_upload(service: RegistryService) -> None:
    upload = service.storage.start_upload()
    await service.receive(upload.id, chunks(b"abc"), "0-2", "3")
    with pytest.raises(DistributionError) as caught:  # a gap
        await service.receive(upload.id, chunks(b"xyz"), "5-7")
    assert caught.value.status == 416 and caught.value.headers == {"Range": "0-2"}
    with pytest.raises(DistributionError) as caught:  # the length says otherwise
        await service.receive(upload.id, chunks(b"def"), "3-5", "4")
    assert caught.value.status == 400
    assert upload.size == 3  # nothing refused was written
    for body in ([b"de", b"fgh"], [b"d"]):  # chunked: no length declared, the body is off
        with pytest.raises(DistributionError) as caught:
            await service.receive(upload.id, chunks(*body), "3-5")
        assert caught.value.status == 400 and "covers 3 bytes" in caught.value.message
        assert upload.size == 3 and upload.path.stat().st_size == 3  # rewound
    await service.receive(upload.id, chunks(b"de", b"f"), "bytes 3-5/6")
    digest = "sha256:" + hashlib.sha256(b"abcdef").hexdigest()
    service.storage.finish_upload(upload, digest)
    assert service.storage.blobs.has(digest)


async def test_idle_uploads_expire(service: RegistryService) -> None:
    storage = service.storage
    idle = storage.start_upload()
    storage.append(idle, b"partial")
    assert storage.expire_uploads(3600) == 0
    assert storage.expire_uploads(0) == 1
    assert not idle.path.exists()
    with pytest.raises(DistributionError) as caught:
        storage.upload(idle.id)
    assert caught.value.status == 404
    with pytest.raises(DistributionError):  # a request still streaming into it stops
        storage.append(idle, b"more")
    assert not idle.path.exists()


async def test_the_server_task_expires_abandoned_uploads(service: RegistryService) -> None:
    await service.open()
    upload = service.storage.start_upload()
    deadline = time.monotonic() + 30  # only so a broken test cannot hang
    while upload.id in service.storage._uploads:
        assert time.monotonic() < deadline, "the upload was never expired"
        await asyncio.sleep(0.05)
    assert list(service.storage.uploads_dir.iterdir()) == []


# ---- over HTTP -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[EmberServer]:
    """A server whose abandoned uploads expire after one second."""
    with scratch_dir() as work:
        server = EmberServer(
            work / "data", env={"EMBER_REGISTRY_UPLOAD_MAX_AGE_SECONDS": "1"}
        ).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def http(server: EmberServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.token()}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


def test_odd_content_ranges_answer_in_the_protocol(http: httpx.Client) -> None:
    start = http.post("/v2/ranges/app/blobs/uploads/")
    location = start.headers["location"]
    tolerated = http.patch(location, content=b"abc", headers={"Content-Range": "bytes 0-2/3"})
    assert tolerated.status_code == 202 and tolerated.headers["range"] == "0-2"

    malformed = http.patch(location, content=b"def", headers={"Content-Range": "x-y"})
    assert malformed.status_code == 400
    assert malformed.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"

    gap = http.patch(location, content=b"def", headers={"Content-Range": "9-11"})
    assert gap.status_code == 416 and gap.headers["range"] == "0-2"

    def chunked(size: int) -> Iterator[bytes]:  # a generator body: no Content-Length
        yield b"x" * size

    longer = http.patch(location, content=chunked(1300), headers={"Content-Range": "3-12"})
    assert longer.status_code == 400
    assert longer.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    assert http.get(location).headers["range"] == "0-2"  # none of its 1,300 bytes kept

    # The connection and the upload both survived: the push carries on.
    digest = "sha256:" + hashlib.sha256(b"abcdef").hexdigest()
    http.patch(location, content=b"def", headers={"Content-Range": "3-5"})
    done = http.put(f"{location}?digest={digest}")
    assert done.status_code == 201
    assert http.get(f"/v2/ranges/app/blobs/{digest}").content == b"abcdef"


def test_abandoned_upload_expires_while_the_server_runs(
    server: EmberServer, http: httpx.Client
) -> None:
    location = http.post("/v2/abandoned/app/blobs/uploads/").headers["location"]
    http.patch(location, content=b"half a layer")
    deadline = time.monotonic() + 60  # only so a broken test cannot hang
    while (status := http.get(location).status_code) == 204:
        assert time.monotonic() < deadline, "the upload was never expired"
        time.sleep(0.2)
    assert status == 404
    assert list((server.data_dir / "registry" / "uploads").iterdir()) == []
