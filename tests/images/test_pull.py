"""Pulls from independent registries (Debian's docker-registry) through a real Ember server."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from hypeman import BadRequestError, Hypeman, NotFoundError, Omit, omit
from hypeman.types import PushCredentialsParam

from ember.testkit import (
    build_image,
    build_index,
    busybox_layer,
    hello_image,
    multilayer_image,
    padded_image,
    push,
)
from ember.testkit.ember_server import EmberServer
from ember.testkit.image import file
from ember.testkit.registry_server import RegistryServer
from tests.conftest import scratch_dir, wait_image
from tests.images.conftest import PASSWORD, USER, TokenService

pytestmark = pytest.mark.server  # starts a real `ember serve`


@pytest.fixture(scope="module")
def server(token_registry: tuple[RegistryServer, TokenService]) -> Iterator[EmberServer]:
    """An Ember server whose ~/.docker/config.json holds credentials for the token registry."""
    with scratch_dir() as home:
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (home / ".docker").mkdir()
        (home / ".docker" / "config.json").write_text(
            json.dumps({"auths": {token_registry[0].host: {"auth": auth}}})
        )
        ember = EmberServer(home / "data", env={"HOME": str(home)}).start()
        try:
            yield ember
        finally:
            ember.stop()


@pytest.fixture
def client(server: EmberServer) -> Hypeman:
    return Hypeman(base_url=server.url, api_key=server.token(), max_retries=0)


def pull(
    client: Hypeman,
    server: EmberServer,
    name: str,
    platform: str | Omit = omit,
    credentials: PushCredentialsParam | Omit = omit,
) -> dict[str, object]:
    client.images.create(name=name, platform=platform, credentials=credentials)
    return wait_image(server, name)


def extract(server: EmberServer, digest: str, tmp_path: Path) -> Path:
    out = tmp_path / "extracted"
    rootfs = server.data_dir / "images" / digest / "rootfs.erofs"
    subprocess.run(["fsck.erofs", f"--extract={out}", str(rootfs)], check=True, capture_output=True)
    return out


def test_multi_layer_image_with_whiteouts(
    client: Hypeman, server: EmberServer, registry: RegistryServer, tmp_path: Path
) -> None:
    image = multilayer_image(cmd=["/bin/sh"], env={"A": "1", "PATH": "/bin"}, working_dir="/app")
    push(image, registry.url, "team/multi", "v1")
    name = f"{registry.host}/team/multi:v1"
    ready = pull(client, server, name)
    assert ready["status"] == "ready", ready
    assert ready["digest"] == image.digest
    assert (ready["cmd"], ready["env"], ready["working_dir"]) == (
        ["/bin/sh"], {"A": "1", "PATH": "/bin"}, "/app",
    )  # fmt: skip
    assert ready["platform"] == "linux/amd64" and ready["size_bytes"]

    root = extract(server, image.digest, tmp_path)
    assert (root / "app/config").read_text() == "v2"
    assert not (root / "app/old").exists()
    assert sorted(p.name for p in (root / "cache").iterdir()) == ["fresh"]
    assert (root / "app/link").readlink() == Path("config")
    assert (root / "bin/sh").readlink() == Path("busybox")
    assert (root / "app/config").stat().st_uid == 1000

    # The same name, and the same digest under another name, do no work.
    blobs_before = sorted((server.data_dir / "blobs" / "sha256").iterdir())
    again = client.images.create(name=name)
    assert again.status == "ready"
    by_digest = pull(client, server, f"{registry.host}/team/multi@{image.digest}")
    assert by_digest["status"] == "ready" and by_digest["digest"] == image.digest
    assert sorted((server.data_dir / "blobs" / "sha256").iterdir()) == blobs_before
    assert [p.name for p in (server.data_dir / "images").iterdir()].count(image.digest) == 1
    assert client.images.get(image.digest).digest == image.digest


def test_multi_platform_index(
    client: Hypeman, server: EmberServer, registry: RegistryServer
) -> None:
    amd = hello_image(architecture="amd64")
    arm = build_image([busybox_layer(), {"arm-marker": file("arm")}], architecture="arm64")
    index = build_index({"amd64": amd, "arm64": arm})
    push(index, registry.url, "multi/arch", "v1")
    push(index, registry.url, "multi/arch", "arm")
    default = pull(client, server, f"{registry.host}/multi/arch:v1")
    assert default["status"] == "ready" and default["platform"] == "linux/amd64"
    assert default["digest"] == index.digest
    assert default["cmd"] == ["/hello"]
    arm_image = pull(client, server, f"{registry.host}/multi/arch:arm", platform="linux/arm64")
    assert arm_image["status"] == "ready" and arm_image["platform"] == "linux/arm64"


def test_corrupted_blob_fails_cleanly(
    client: Hypeman, server: EmberServer, registry: RegistryServer
) -> None:
    image = build_image([{"data": file("precious bytes " * 1000)}], cmd=["/x"])
    push(image, registry.url, "broken/blob", "v1")
    layer = next(d for d in image.blobs if image.blobs[d][:2] == b"\x1f\x8b")
    stored = (
        registry.root / "data/docker/registry/v2/blobs/sha256" / layer[7:9] / layer[7:] / "data"
    )
    stored.write_bytes(stored.read_bytes()[:-10] + b"tampered!!")

    failed = pull(client, server, f"{registry.host}/broken/blob:v1")
    assert failed["status"] == "failed"
    assert "failed verification" in str(failed["error"])
    assert not (server.data_dir / "images" / image.digest).exists()
    assert not (server.data_dir / "blobs" / "sha256" / layer[7:]).exists()
    assert list((server.data_dir / "blobs" / "tmp").iterdir()) == []


def test_missing_tag_and_unreachable_registry(
    client: Hypeman, server: EmberServer, registry: RegistryServer
) -> None:
    missing = pull(client, server, f"{registry.host}/no/such:tag")
    assert missing["status"] == "failed"
    assert "not found (404)" in str(missing["error"])
    unreachable = pull(client, server, "127.0.0.1:1/nothing:here")
    assert unreachable["status"] == "failed"
    assert "cannot reach registry 127.0.0.1:1" in str(unreachable["error"])


def test_basic_auth_with_borrowed_credentials(
    client: Hypeman, server: EmberServer, basic_registry: RegistryServer
) -> None:
    push(hello_image(), basic_registry.url, "private/app", "v1", basic=(USER, PASSWORD))
    name = f"{basic_registry.host}/private/app:v1"
    denied = pull(client, server, name)
    assert denied["status"] == "failed" and "unauthorized" in str(denied["error"])
    allowed = pull(client, server, name, credentials={"username": USER, "password": PASSWORD})
    assert allowed["status"] == "ready", allowed
    assert PASSWORD not in (server.data_dir / "ember.db").read_bytes().decode(errors="replace")


def test_bearer_token_challenge_with_docker_config(
    client: Hypeman, server: EmberServer, token_registry: tuple[RegistryServer, TokenService]
) -> None:
    registry, tokens = token_registry
    push(hello_image(), registry.url, "tokened/app", "v1", token=tokens.token(
        "repository:tokened/app:pull,push"))  # fmt: skip
    ready = pull(client, server, f"{registry.host}/tokened/app:v1")
    assert ready["status"] == "ready", ready
    assert {"scope": ["repository:tokened/app:pull"], "service": ["ember-test"]} in tokens.requests


def test_bad_requests_tag_and_delete(
    client: Hypeman, server: EmberServer, registry: RegistryServer
) -> None:
    with pytest.raises(BadRequestError, match="invalid repository"):
        client.images.create(name="UPPER/case")
    with pytest.raises(BadRequestError, match="platform") as error:
        client.images.create(name="x:1", platform="windows/amd64")
    body = error.value.body
    assert isinstance(body, dict) and body["code"] == "invalid_platform"
    with pytest.raises(NotFoundError):
        client.images.get("never/pulled:here")

    image = build_image([busybox_layer()], cmd=["/bin/sh"])
    push(image, registry.url, "to/delete", "v1")
    name = f"{registry.host}/to/delete:v1"
    assert pull(client, server, name)["status"] == "ready"
    tagged = client.images.tag(name, target="local/alias:stable")
    assert tagged.name == "docker.io/local/alias:stable" and tagged.digest == image.digest
    client.images.delete(name)
    assert (server.data_dir / "images" / image.digest).exists()  # the alias still uses it
    client.images.delete("local/alias:stable")
    assert not (server.data_dir / "images" / image.digest).exists()
    with pytest.raises(NotFoundError):
        client.images.get(name)
    listed = httpx.get(
        f"{server.url}/images", headers={"Authorization": f"Bearer {server.token()}"}
    )
    assert all(i["name"] != name for i in listed.json())
    shutil.rmtree(registry.root / "data" / "docker" / "registry" / "v2" / "repositories" / "to")


def test_server_restart_mid_pull_resumes(registry: RegistryServer) -> None:
    image = padded_image(60 * 1024 * 1024, layers=3)
    push(image, registry.url, "big/resume", "v1")
    name = f"{registry.host}/big/resume:v1"
    with scratch_dir() as work:
        ember = EmberServer(work / "data").start()
        try:
            client = Hypeman(base_url=ember.url, api_key=ember.token(), max_retries=0)
            client.images.create(name=name)
            deadline = time.monotonic() + 30
            while client.images.get(name).status == "pending":
                assert time.monotonic() < deadline
                time.sleep(0.01)
            ember.stop(signal.SIGKILL)  # mid-pull (or mid-conversion): no clean shutdown
            ember.start()
            resumed = wait_image(ember, name, timeout=120)
            assert resumed["status"] == "ready", resumed
            assert resumed["digest"] == image.digest
            assert list((ember.data_dir / "blobs" / "tmp").iterdir()) == []
        finally:
            ember.stop()


class RateLimited(BaseHTTPRequestHandler):
    """A registry that always answers 429, asking to retry at once."""

    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(429)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_rate_limited_registry_is_retried_then_reported(
    client: Hypeman, server: EmberServer
) -> None:
    busy = ThreadingHTTPServer(("127.0.0.1", 0), RateLimited)
    threading.Thread(target=busy.serve_forever, daemon=True).start()
    try:
        name = f"127.0.0.1:{busy.server_address[1]}/busy/app:v1"
        failed = pull(client, server, name)
        assert failed["status"] == "failed"
        assert "rate limited (429)" in str(failed["error"])
        assert RateLimited.hits == 4  # retried, within bounds
    finally:
        busy.shutdown()
