"""`POST /images` of a ready tag asks the registry whether the tag moved; lookups by digest."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from hypeman import BadRequestError, Hypeman

from ember.testkit import BuiltImage, build_image, busybox_layer, push
from ember.testkit.ember_server import EmberServer
from ember.testkit.image import file
from ember.testkit.registry_server import start_registry
from tests.conftest import push_to_ember, wait_image
from tests.images.conftest import GatedProxy

pytestmark = pytest.mark.server  # starts a real `ember serve`


def api(server: EmberServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token()}"}, timeout=30
    )


def version(text: str) -> BuiltImage:
    return build_image([busybox_layer(), {"version": file(text)}], cmd=["/bin/sh"])


def test_a_moved_tag_is_pulled_again_and_the_old_digest_stays(
    ember_server: EmberServer, gated: GatedProxy
) -> None:
    gated.release(1000)  # no gating here: the proxy only counts what is fetched
    client = Hypeman(base_url=ember_server.url, api_key=ember_server.token(), max_retries=0)
    v1, v2 = version("1"), version("2")
    push(v1, gated.upstream.url, "refresh/app", "latest")
    name = f"{gated.host}/refresh/app:latest"
    client.images.create(name=name)
    first = wait_image(ember_server, name)
    assert first["status"] == "ready" and first["digest"] == v1.digest

    # Same digest: no pull (no blob fetched, ready throughout), one HEAD; tags are kept.
    served, heads = len(gated.served), len(gated.heads)
    started = time.perf_counter()
    again = client.images.create(name=name, tags={"team": "a"})
    assert time.perf_counter() - started < 2
    assert (again.status, again.digest, again.tags) == ("ready", first["digest"], {"team": "a"})
    assert len(gated.served) == served and len(gated.heads) == heads + 1
    assert client.images.get(name).status == "ready"

    # The tag moves: the POST answers the new pull (as Hypeman does), which becomes ready.
    push(v2, gated.upstream.url, "refresh/app", "latest")
    moved = client.images.create(name=name, tags={"stage": "b"})
    assert moved.status != "ready" and moved.tags == {"team": "a", "stage": "b"}
    ready = wait_image(ember_server, name)
    assert ready["status"] == "ready" and ready["digest"] == v2.digest
    assert ready["tags"] == {"team": "a", "stage": "b"}
    fetched = gated.served[served:]
    assert busybox_digest(v2) not in fetched  # the shared layer was cached
    # The old content stays an image of its own, by digest, with its root disk.
    old = client.images.get(f"{gated.host}/refresh/app@{first['digest']}")
    assert (old.status, old.digest) == ("ready", first["digest"])
    images = ember_server.data_dir / "images"
    assert (images / str(first["digest"]) / "rootfs.erofs").exists()
    assert (images / str(ready["digest"]) / "rootfs.erofs").exists()

    # And again with no change: no work.
    served = len(gated.served)
    assert client.images.create(name=name).status == "ready"
    assert len(gated.served) == served


def busybox_digest(image: BuiltImage) -> str:
    return str(json.loads(image.manifest)["layers"][0]["digest"])


def test_an_unreachable_registry_keeps_the_ready_image(
    ember_server: EmberServer, tmp_path: Path
) -> None:
    registry = start_registry(tmp_path / "registry")
    try:
        image = version("gone")
        push(image, registry.url, "gone/app", "v1")
        name = f"{registry.host}/gone/app:v1"
        with api(ember_server) as http:
            http.post("/images", json={"name": name}).raise_for_status()
            assert wait_image(ember_server, name)["status"] == "ready"
    finally:
        registry.stop()
    with api(ember_server) as http:
        started = time.perf_counter()
        answer = http.post("/images", json={"name": name, "tags": {"kept": "yes"}})
        assert time.perf_counter() - started < 2
        assert answer.status_code == 202
        body = answer.json()
        assert (body["status"], body["digest"]) == ("ready", image.digest)
        assert body["tags"] == {"kept": "yes"}


def test_built_in_registry_tags_resolve_locally(ember_server: EmberServer) -> None:
    name = push_to_ember(ember_server, version("local"), "local/app", "v1")
    with api(ember_server) as http:
        body = http.post("/images", json={"name": name}).json()
    assert body["status"] == "ready"


def test_repo_at_digest_finds_an_image_pulled_by_tag(ember_server: EmberServer) -> None:
    name = push_to_ember(ember_server, version("by-digest"), "digest/app", "v1")
    client = Hypeman(base_url=ember_server.url, api_key=ember_server.token(), max_retries=0)
    digest = client.images.get(name).digest
    by_digest = f"127.0.0.1:{ember_server.port}/digest/app@{digest}"
    found = client.images.get(by_digest)
    assert (found.name, found.digest) == (name, digest)
    # Instance creation finds it too: it gets as far as comparing the image's platform.
    with pytest.raises(BadRequestError, match="is linux/amd64, not linux/arm64"):
        client.instances.create(name="by-digest", image=by_digest, platform="linux/arm64")
    # Another repository with that digest, or a digest nothing has: not found.
    with api(ember_server) as http:
        other = f"127.0.0.1:{ember_server.port}/other/app@{digest}".replace("/", "%2F")
        assert http.get(f"/images/{other}").status_code == 404


def test_a_bad_reference_is_a_400_naming_the_problem(ember_server: EmberServer) -> None:
    with api(ember_server) as http:
        created = http.post("/instances", json={"name": "bad-ref", "image": "::::bad ref"})
        assert created.status_code == 400, created.text
        assert "invalid image reference '::::bad ref'" in created.json()["message"]
        pulled = http.post("/images", json={"name": "::::bad ref"})
        assert pulled.status_code == 400
        assert http.get("/images/Upper%2FCase:x").status_code == 400
        assert http.get("/images/sha256:" + "0" * 64).status_code == 404
        assert http.get("/images/never%2Fpulled:here").status_code == 404


def test_a_moved_tag_whose_digest_was_pulled_by_name_leaves_that_image(
    ember_server: EmberServer, gated: GatedProxy
) -> None:
    gated.release(1000)
    v1, v2 = version("pinned-1"), version("pinned-2")
    push(v1, gated.upstream.url, "pinned/app", "latest")
    tag, pinned = f"{gated.host}/pinned/app:latest", f"{gated.host}/pinned/app@{v1.digest}"
    with api(ember_server) as http:
        for name in (pinned, tag):
            http.post("/images", json={"name": name}).raise_for_status()
            assert wait_image(ember_server, name)["status"] == "ready"
        push(v2, gated.upstream.url, "pinned/app", "latest")
        http.post("/images", json={"name": tag}).raise_for_status()
        assert wait_image(ember_server, tag)["digest"] == v2.digest
        names = sorted(i["name"] for i in http.get("/images").json())
    assert names == sorted([tag, pinned])  # the old tag record went: `pinned` keeps v1
    assert (ember_server.data_dir / "images" / v1.digest / "rootfs.erofs").exists()
