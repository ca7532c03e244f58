"""Builds in real builder VMs (buildah under TCG: minutes each, so few of them).

The server runs inside a namespace this module made (builder VMs reach Ember's registry
over the guest network); each scenario drives it from inside with the official client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypeman import Hypeman

from ember.testkit import build_image, busybox_layer
from ember.testkit.ember_server import EmberServer
from ember.testkit.netns import in_netns
from tests.builds.sources import source_archive
from tests.conftest import push_to_ember, running_server

pytestmark = pytest.mark.vm
BUILD_WAIT = 1500.0  # a first build boots a VM and converts the builder image under TCG

DOCKERFILE = """\
FROM base/busybox:latest
ENV GREETING=hello-from-ember-build
COPY message.txt /app/message.txt
RUN echo "$GREETING" > /app/built.txt && cat /app/message.txt >> /app/built.txt
CMD ["cat", "/app/built.txt"]
"""


@pytest.fixture(scope="module")
def server(ns: str) -> Iterator[EmberServer]:
    with running_server(ns) as server:
        yield server


def client_of(server: EmberServer) -> Hypeman:
    return Hypeman(base_url=server.url, api_key=server.token(), max_retries=0, timeout=300)


def wait_build(client: Hypeman, build_id: str, timeout: float = BUILD_WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        build = client.builds.get(build_id)
        if build.status in ("ready", "failed", "cancelled") or time.monotonic() > deadline:
            return build
        time.sleep(2)


def events_of(client: Hypeman, build_id: str) -> list[dict[str, Any]]:
    return [e.model_dump(mode="json") for e in client.builds.events(build_id)]


def build_and_run(server: EmberServer) -> dict[str, Any]:
    push_to_ember(server, build_image([busybox_layer()], history=True), "base/busybox", "latest")
    client = client_of(server)
    source = source_archive({"message.txt": "copied by COPY\n"})
    build = client.builds.create(
        source=("app.tar.gz", source), dockerfile=DOCKERFILE, image_name="apps/hello:v1",
        memory_mb=1024, cpus=2, timeout_seconds=1200,
    )  # fmt: skip
    first = wait_build(client, build.id)
    out: dict[str, Any] = {"first": first.model_dump(mode="json"), "run": None}
    out["events"] = events_of(client, build.id)
    if first.status == "ready":
        inst = client.instances.create(name="built", image=first.image_ref, size="256MB", vcpus=1)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and client.instances.get(inst.id).state != "Stopped":
            time.sleep(1)
        out["run"] = list(client.instances.logs(inst.id, tail=100))
        client.instances.delete(inst.id)
        again = client.builds.create(
            source=("app.tar.gz", source), dockerfile=DOCKERFILE, image_name="apps/hello:v2",
            memory_mb=1024, cpus=2,
        )  # fmt: skip
        out["second"] = wait_build(client, again.id).model_dump(mode="json")
        out["second_events"] = events_of(client, again.id)
    out["instances"] = [i.name for i in client.instances.list()]
    return out


def test_build_runs_and_rebuild_uses_the_cache(server: EmberServer, ns: str) -> None:
    out = in_netns(ns, build_and_run, server)
    first = out["first"]
    assert first["status"] == "ready", (first, out["events"][-30:])
    assert first["image_ref"].endswith("/apps/hello:v1")
    assert first["image_digest"].startswith("sha256:")
    assert first["provenance"]["source_hash"].startswith("sha256:")
    assert first["duration_ms"] > 0
    statuses = [e["status"] for e in out["events"] if e["type"] == "status"]
    assert statuses == ["queued", "building", "pushing", "ready"]
    assert "hello-from-ember-build" in "\n".join(out["run"])
    assert "copied by COPY" in "\n".join(out["run"])
    second = out["second"]
    assert second["status"] == "ready", out["second_events"][-30:]
    logs = "\n".join(e.get("content", "") for e in out["second_events"] if e["type"] == "log")
    assert "Using cache" in logs
    assert out["instances"] == []  # every builder VM is gone
