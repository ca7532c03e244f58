"""Pull progress in bytes: on the image JSON while pulling, and as the CLI's bars.

Blobs come through `GatedProxy`, which sends each one only when the test
allows it, so every state asserted here is one the pull is held in: no sleeps
and no timing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypeman import Hypeman
from typer.testing import CliRunner

from ember.cli.main import app
from ember.client import EmberClient
from ember.testkit import build_image, busybox_layer, multilayer_image, push
from ember.testkit.ember_server import EmberServer
from ember.testkit.image import BuiltImage, file
from ember.testkit.registry_server import RegistryServer
from tests.images.conftest import GatedProxy

pytestmark = pytest.mark.server  # starts a real `ember serve`

Image = dict[str, Any]


def wait_for(get: Callable[[], Image], done: Callable[[Image], bool], what: str) -> Image:
    """Poll until `done`; the deadline only stops a broken test from hanging."""
    deadline = time.monotonic() + 120
    while True:
        image = get()
        if done(image):
            return image
        assert time.monotonic() < deadline, f"never saw {what}: {image}"
        time.sleep(0.02)


def phase(image: Image) -> str | None:
    return (image.get("progress") or {}).get("phase")


class Watcher:
    """GET /images/{name}, remembering every answer."""

    def __init__(self, server: EmberServer, name: str) -> None:
        self.http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.token()}"}
        )
        self.path = f"/images/{quote(name, safe='')}"
        self.seen: list[Image] = []

    def __call__(self) -> Image:
        image: Image = self.http.get(self.path).json()
        self.seen.append(image)
        return image


def sizes(image: BuiltImage) -> dict[str, int]:
    return {digest: len(data) for digest, data in image.blobs.items()}


def base_layer(image: BuiltImage) -> str:
    return str(json.loads(image.manifest)["layers"][0]["digest"])


@pytest.fixture
def client(ember_server: EmberServer) -> Hypeman:
    return Hypeman(base_url=ember_server.url, api_key=ember_server.token(), max_retries=0)


def test_bytes_done_rises_blob_by_blob_to_bytes_total(
    ember_server: EmberServer, client: Hypeman, registry: RegistryServer, gated: GatedProxy
) -> None:
    image = multilayer_image()
    push(image, registry.url, "progress/multi", "v1")
    name = f"{gated.host}/progress/multi:v1"
    client.images.create(name=name)
    get = Watcher(ember_server, name)

    first = wait_for(get, lambda i: phase(i) == "downloading", "the download start")
    assert first["status"] == "pulling"
    # Everything the manifest lists (config + layers) is counted; nothing is here yet.
    assert first["progress"] == {"phase": "downloading", "bytes_done": 0,
                                 "bytes_total": image.size}  # fmt: skip
    # The official client still parses the image, extra field and all.
    parsed = client.images.get(name)
    assert parsed.status == "pulling" and parsed.digest == ""
    extension = parsed.to_dict()["progress"]
    assert isinstance(extension, dict) and extension["bytes_total"] == image.size
    assert any(i.name == name for i in client.images.list())

    blob_sizes = sizes(image)
    for count in range(1, len(image.blobs)):  # all but the last: the pull stays in download
        gated.release()

        def counted_whole(i: Image, count: int = count) -> bool:
            served = sum(blob_sizes[d] for d in gated.served)
            return len(gated.served) == count and i["progress"]["bytes_done"] == served

        wait_for(get, counted_whole, f"blob {count} counted")
    gated.release()
    ready = wait_for(get, lambda i: i["status"] in ("ready", "failed"), "the end")
    assert ready["status"] == "ready", ready
    assert ready["progress"] is None

    # Each blob was fetched once, and they add up to the total announced at the start.
    assert sorted(gated.served) == sorted(image.blobs)
    downloading = [i["progress"] for i in get.seen if phase(i) == "downloading"]
    done = [p["bytes_done"] for p in downloading]
    # Never backwards, never past the total, and every blob but the last was seen
    # counted whole (mid-blob values and the final total may or may not be caught).
    assert done == sorted(done) and done[-1] <= image.size
    counted = [sum(blob_sizes[d] for d in gated.served[:k]) for k in range(len(image.blobs))]
    assert set(counted) <= set(done)
    assert {p["bytes_total"] for p in downloading} == {image.size}
    phases = [str(phase(i)) for i in get.seen if i["progress"]]
    order = ["resolving", "downloading", "unpacking", "building"]
    assert [order.index(p) for p in phases] == sorted(order.index(p) for p in phases)
    unpacking = [i["progress"] for i in get.seen if phase(i) == "unpacking"]
    layer_bytes = image.size - len(image.blobs[json.loads(image.manifest)["config"]["digest"]])
    assert all(0 <= p["bytes_done"] <= p["bytes_total"] == layer_bytes for p in unpacking)

    # A second image on the same base layer: that layer counts as done from the start.
    other = build_image([busybox_layer(), {"other": file("other")}], cmd=["/bin/sh"])
    push(other, registry.url, "progress/other", "v1")
    other_name = f"{gated.host}/progress/other:v1"
    client.images.create(name=other_name)
    get_other = Watcher(ember_server, other_name)
    start = wait_for(get_other, lambda i: phase(i) == "downloading", "the second download")
    base = base_layer(other)
    assert base == base_layer(image)
    assert start["progress"] == {"phase": "downloading", "bytes_done": len(other.blobs[base]),
                                 "bytes_total": other.size}  # fmt: skip
    gated.release(len(other.blobs))
    assert wait_for(get_other, lambda i: i["status"] != "pulling", "the end")["status"] in (
        "converting", "ready",
    )  # fmt: skip
    assert base not in gated.served[len(image.blobs) :]


@pytest.fixture
def cli_env(ember_server: EmberServer) -> dict[str, str]:
    # Wide enough that rich does not wrap the outcome line.
    return {"EMBER_URL": ember_server.url, "EMBER_TOKEN": ember_server.token(), "COLUMNS": "200"}


@pytest.fixture
def released_as_watched(gated: GatedProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let one blob through each time the CLI has seen the download move (or start)."""
    watch = EmberClient.watch_image

    def watching(self: EmberClient, name: str, interval: float = 0.2) -> Iterator[Image]:
        for image in watch(self, name, interval):
            yield image
            if phase(image) == "downloading":
                gated.release()

    monkeypatch.setattr(EmberClient, "watch_image", watching)


@pytest.mark.usefixtures("released_as_watched")
def test_cli_pull_shows_byte_progress_then_ready(
    cli_env: dict[str, str], registry: RegistryServer, gated: GatedProxy
) -> None:
    image = multilayer_image(env={"FOR": "cli"})
    push(image, registry.url, "progress/cli", "v1")
    name = f"{gated.host}/progress/cli:v1"
    result = CliRunner().invoke(app, ["pull", name], env=cli_env)
    assert result.exit_code == 0, result.output
    # Not a terminal: the bars are printed once, finished, before the outcome.
    lines = result.stdout.splitlines()
    download = next(line for line in lines if line.startswith("downloading"))
    assert f"{image.size / 1e6:.1f}/{image.size / 1e6:.1f} MB" in download, download
    assert "/s" in download  # a transfer rate
    assert lines[-1].startswith(f"ready {name} {image.digest}")


@pytest.mark.usefixtures("released_as_watched")
def test_cli_pull_json_prints_only_the_final_object(
    cli_env: dict[str, str], registry: RegistryServer, gated: GatedProxy
) -> None:
    image = multilayer_image(env={"FOR": "json"})
    push(image, registry.url, "progress/json", "v1")
    name = f"{gated.host}/progress/json:v1"
    result = CliRunner().invoke(app, ["pull", "--json", name], env=cli_env)
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)
    assert final["status"] == "ready" and final["digest"] == image.digest
    assert final["progress"] is None


@pytest.mark.usefixtures("released_as_watched")
def test_cli_pull_failure_keeps_stdout_json_and_says_why_on_stderr(
    cli_env: dict[str, str], gated: GatedProxy
) -> None:
    name = f"{gated.host}/progress/absent:v1"
    result = CliRunner().invoke(app, ["pull", "--json", name], env=cli_env)
    assert result.exit_code == 1
    final = json.loads(result.stdout)
    assert final["status"] == "failed" and final["error"]
    assert "pull failed:" in result.stderr
