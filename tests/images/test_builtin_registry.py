"""Ember's own /v2/ registry: pushes from our client, from skopeo, and what becomes of them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from hypeman import Hypeman

from ember.testkit import build_image, busybox_layer, hello_image, padded_image, push
from ember.testkit.ember_server import EmberServer
from ember.testkit.image import file, write_oci_layout
from tests.conftest import wait_image

pytestmark = pytest.mark.server  # starts a real `ember serve`


@pytest.fixture
def http(shared_server: EmberServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {shared_server.token()}"}
    return httpx.Client(base_url=shared_server.url, headers=headers, timeout=30)


def test_chunked_push_becomes_an_image(shared_server: EmberServer, http: httpx.Client) -> None:
    image = padded_image(3 * 1024 * 1024, layers=2)
    digest = push(image, shared_server.url, "chunky/app", "v1", token=shared_server.token(),
                  chunk_size=256 * 1024)  # fmt: skip
    assert digest == image.digest
    name = f"127.0.0.1:{shared_server.port}/chunky/app:v1"
    ready = wait_image(shared_server, name)
    assert ready["status"] == "ready" and ready["digest"] == image.digest
    assert http.get("/v2/chunky/app/tags/list").json() == {"name": "chunky/app", "tags": ["v1"]}
    manifest = http.get("/v2/chunky/app/manifests/v1")
    assert manifest.content == image.manifest
    assert manifest.headers["docker-content-digest"] == image.digest
    layer = next(iter(image.blobs))
    assert http.get(f"/v2/chunky/app/blobs/{layer}").content == image.blobs[layer]
    assert http.head(f"/v2/other/repo/blobs/{layer}").status_code == 200  # blobs are shared


def test_skopeo_copy_with_basic_auth(
    shared_server: EmberServer, http: httpx.Client, tmp_path: Path
) -> None:
    image = hello_image(env={"FROM": "skopeo"})
    write_oci_layout(image, tmp_path / "layout")
    target = f"docker://127.0.0.1:{shared_server.port}/tools/hello:skopeo"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
         "--dest-creds", f"ember:{shared_server.token()}", f"oci:{tmp_path / 'layout'}:latest",
         target],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    ready = wait_image(shared_server, f"127.0.0.1:{shared_server.port}/tools/hello:skopeo")
    assert ready["status"] == "ready", ready
    assert ready["env"] == {"FROM": "skopeo"}
    # And skopeo can read it back out (the pull side of the protocol).
    subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--creds", f"ember:{shared_server.token()}",
         target],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def test_registry_errors_and_auth(shared_server: EmberServer, http: httpx.Client) -> None:
    anonymous = httpx.get(f"{shared_server.url}/v2/")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic")
    assert anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert http.get("/v2/").status_code == 200

    missing = http.get("/v2/nothing/here/manifests/v1")
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert http.get("/v2/Bad/Name/tags/list").json()["errors"][0]["code"] == "NAME_INVALID"

    # A manifest naming blobs that were never pushed is refused, and creates no image.
    image = build_image([busybox_layer()], cmd=["/bin/sh"])
    refused = http.put(
        "/v2/half/pushed/manifests/v1",
        content=image.manifest,
        headers={"Content-Type": image.media_type},
    )
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert http.get("/images").json() == [] or all(
        "half/pushed" not in i["name"] for i in http.get("/images").json()
    )

    # An upload whose content does not match its digest is refused and leaves nothing.
    start = http.post("/v2/bad/upload/blobs/uploads/")
    wrong = "sha256:" + "0" * 64
    done = http.put(f"{start.headers['location']}?digest={wrong}", content=b"data")
    assert done.status_code == 400 and done.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert http.head(f"/v2/bad/upload/blobs/{wrong}").status_code == 404


@pytest.mark.vm  # boots the pushed image
def test_pushed_image_runs(shared_server: EmberServer) -> None:
    image = build_image(
        [busybox_layer(), {"greeting.txt": file("pushed and booted\n")}],
        cmd=["/bin/cat", "/greeting.txt"],
    )
    push(image, shared_server.url, "cat/greeting", "v1", token=shared_server.token())
    name = f"127.0.0.1:{shared_server.port}/cat/greeting:v1"
    assert wait_image(shared_server, name)["status"] == "ready"
    client = Hypeman(base_url=shared_server.url, api_key=shared_server.token(), max_retries=0)
    inst = client.instances.create(name="greeter", image=name, vcpus=1, size="256MB")
    assert client.instances.wait(inst.id, state="Stopped", api_timeout="120s").state == "Stopped"
    assert "pushed and booted" in list(client.instances.logs(inst.id))
    assert client.instances.get(inst.id).exit_code == 0
    client.instances.delete(inst.id)
