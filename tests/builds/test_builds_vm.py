"""Builds in real builder VMs (buildah under TCG: minutes each, so few of them).

The server runs inside a namespace this module made (builder VMs reach Ember's registry
over the guest network); each scenario drives it from inside with the official client.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypeman import Hypeman

from ember.testkit import build_image, busybox_layer
from ember.testkit.ember_server import EmberServer
from ember.testkit.image import tar_gz
from ember.testkit.netns import in_netns
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


def instances_once_settled(client: Hypeman, timeout: float = 120.0) -> list[str]:
    """Instance names once no builder VM is left: one is deleted just after its build
    ends (`ready` does not wait for it), so give it the time."""
    deadline = time.monotonic() + timeout
    while True:
        names = [i.name for i in client.instances.list()]
        if not any(n.startswith("build-") for n in names) or time.monotonic() > deadline:
            return names
        time.sleep(1)


def story(build: dict[str, Any], events: list[dict[str, Any]], lines: int = 40) -> str:
    """A failed build's error and last log lines, as text (pytest cuts long reprs)."""
    tail = [f"{e['timestamp']} {e.get('content') or e.get('status')}" for e in events[-lines:]]
    return "\n".join([f"status {build['status']}: {build.get('error')}", *tail])


def events_of(client: Hypeman, build_id: str) -> list[dict[str, Any]]:
    return [e.model_dump(mode="json") for e in client.builds.events(build_id)]


def build_and_run(server: EmberServer) -> dict[str, Any]:
    push_to_ember(server, build_image([busybox_layer()], history=True), "base/busybox", "latest")
    client = client_of(server)
    source = tar_gz({"message.txt": "copied by COPY\n"})
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
    out["instances"] = instances_once_settled(client)
    return out


def test_build_runs_and_rebuild_uses_the_cache(server: EmberServer, ns: str) -> None:
    out = in_netns(ns, build_and_run, server)
    first = out["first"]
    assert first["status"] == "ready", story(first, out["events"])
    assert first["image_ref"].endswith("/apps/hello:v1")
    assert first["image_digest"].startswith("sha256:")
    assert first["provenance"]["source_hash"].startswith("sha256:")
    assert first["duration_ms"] > 0
    statuses = [e["status"] for e in out["events"] if e["type"] == "status"]
    assert statuses == ["queued", "building", "pushing", "ready"]
    assert "hello-from-ember-build" in "\n".join(out["run"])
    assert "copied by COPY" in "\n".join(out["run"])
    second = out["second"]
    assert second["status"] == "ready", story(second, out["second_events"])
    logs = "\n".join(e.get("content", "") for e in out["second_events"] if e["type"] == "log")
    assert "Using cache" in logs
    assert out["instances"] == []  # every builder VM is gone


SECRET = "s3cr3t-v4lue-for-build"
SECRET_DOCKERFILE = """\
FROM base/busybox:latest
RUN --mount=type=secret,id=token echo "secret bytes: $(wc -c < /run/secrets/token)" > /proof
RUN --mount=type=secret,id=token cat /run/secrets/token; echo
CMD ["cat", "/proof"]
"""
FAILING_DOCKERFILE = """\
FROM base/busybox:latest
RUN echo "about to fail on purpose" && exit 3
"""
SLOW_DOCKERFILE = """\
FROM base/busybox:latest
RUN echo "sleeping now" && sleep 900
"""


def layers_of(server: EmberServer, repository: str, tag: str) -> list[bytes]:
    """Every layer of an image in Ember's registry, uncompressed."""
    headers = {"Authorization": f"Bearer {server.token()}",
               "Accept": "application/vnd.oci.image.manifest.v1+json"}  # fmt: skip
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        manifest = http.get(f"/v2/{repository}/manifests/{tag}").json()
        blobs = [http.get(f"/v2/{repository}/blobs/{d['digest']}").content
                 for d in manifest["layers"]]  # fmt: skip
    return [gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b for b in blobs]


def secret_failure_cancel(server: EmberServer) -> dict[str, Any]:
    push_to_ember(server, build_image([busybox_layer()], history=True), "base/busybox", "latest")
    client = client_of(server)
    source = tar_gz({"README": "nothing to see\n"})
    out: dict[str, Any] = {}
    secret = client.builds.create(
        source=("s.tar.gz", source), dockerfile=SECRET_DOCKERFILE, image_name="apps/secret:v1",
        secrets=json.dumps([{"id": "token", "value": SECRET}]), memory_mb=1024,
    )  # fmt: skip
    out["secret"] = wait_build(client, secret.id).model_dump(mode="json")
    out["secret_events"] = events_of(client, secret.id)
    if out["secret"]["status"] == "ready":
        out["secret_layers"] = layers_of(server, "apps/secret", "v1")
    failing = client.builds.create(
        source=("f.tar.gz", source), dockerfile=FAILING_DOCKERFILE, image_name="apps/fail:v1",
        memory_mb=1024,
    )  # fmt: skip
    out["failing"] = wait_build(client, failing.id).model_dump(mode="json")
    out["failing_events"] = events_of(client, failing.id)
    slow = client.builds.create(
        source=("c.tar.gz", source), dockerfile=SLOW_DOCKERFILE, image_name="apps/cancel:v1",
        memory_mb=1024,
    )  # fmt: skip
    deadline = time.monotonic() + BUILD_WAIT
    while time.monotonic() < deadline:  # cancel once the RUN step is under way
        logs = [e.get("content") or "" for e in events_of(client, slow.id)]
        if any("sleeping now" in line for line in logs):
            break
        assert client.builds.get(slow.id).status in ("queued", "building"), logs[-20:]
        time.sleep(2)
    client.builds.cancel(slow.id)
    out["cancelled"] = client.builds.get(slow.id).model_dump(mode="json")
    out["instances"] = [i.name for i in client.instances.list()]
    out["images"] = [i.name for i in client.images.list()]
    return out


def test_secret_failure_and_cancel(server: EmberServer, ns: str) -> None:
    out = in_netns(ns, secret_failure_cancel, server)
    # A secret: usable in RUN, never in the build log nor in any layer of the image.
    assert out["secret"]["status"] == "ready", story(out["secret"], out["secret_events"])
    logs = "\n".join(e.get("content") or "" for e in out["secret_events"])
    assert SECRET not in logs and "****" in logs  # the step that printed it was blotted
    assert not any(SECRET.encode() in layer for layer in out["secret_layers"])
    proof = f"secret bytes: {len(SECRET)}".encode()  # the RUN step read it
    assert any(proof in layer for layer in out["secret_layers"])
    # A failing RUN: `failed`, with the step's own output and why in the events.
    failing = out["failing"]
    assert failing["status"] == "failed" and "exit code" in failing["error"]
    lines = [e.get("content") or "" for e in out["failing_events"]]
    assert any("about to fail on purpose" in line for line in lines)
    assert [e["status"] for e in out["failing_events"] if e["type"] == "status"][-1] == "failed"
    # Cancel mid-build: cancelled, no builder VM left, no image made.
    assert out["cancelled"]["status"] == "cancelled"
    assert out["instances"] == []
    assert not any("apps/cancel" in name for name in out["images"])


def python_app(server: EmberServer) -> dict[str, Any]:
    client = client_of(server)
    source = tar_gz({"app.py": "import sys\nprint('python app says hi', sys.version_info[0])\n"})
    build = client.builds.create(source=("p.tar.gz", source), image_name="apps/py", memory_mb=1024)
    out: dict[str, Any] = {"build": wait_build(client, build.id).model_dump(mode="json")}
    out["events"] = events_of(client, build.id)
    if out["build"]["status"] == "ready":
        inst = client.instances.create(name="py", image=out["build"]["image_ref"], size="256MB")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and client.instances.get(inst.id).state != "Stopped":
            time.sleep(1)
        out["run"] = list(client.instances.logs(inst.id, tail=100))
        client.instances.delete(inst.id)
    return out


def test_python_app_without_dockerfile(server: EmberServer, ns: str) -> None:
    out = in_netns(ns, python_app, server)
    assert out["build"]["status"] == "ready", story(out["build"], out["events"])
    logs = [e.get("content") or "" for e in out["events"]]
    assert any("no Dockerfile: building a python app" in line for line in logs)
    assert "python app says hi 3" in "\n".join(out["run"])


def static_site(server: EmberServer) -> dict[str, Any]:
    client = client_of(server)
    source = tar_gz({"index.html": "<h1>static site says hi</h1>\n"})
    build = client.builds.create(source=("w.tar.gz", source), image_name="apps/site",
                                 memory_mb=1024)  # fmt: skip
    out: dict[str, Any] = {"build": wait_build(client, build.id).model_dump(mode="json")}
    out["events"] = events_of(client, build.id)
    if out["build"]["status"] == "ready":
        inst = client.instances.create(name="site", image=out["build"]["image_ref"], size="256MB")
        try:
            out["page"] = fetch_page(client, inst.id)
        finally:
            client.instances.delete(inst.id)
    return out


def fetch_page(client: Hypeman, instance_id: str, timeout: float = 180.0) -> str | None:
    """GET / on the instance's port 8080 once its server answers (None if it never did)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inst = client.instances.get(instance_id)
        if inst.state == "Running" and inst.network is not None and inst.network.ip:
            try:
                return httpx.get(f"http://{inst.network.ip}:8080/", timeout=5).text
            except httpx.HTTPError:
                pass
        time.sleep(1)
    return None


def test_static_site_without_dockerfile(server: EmberServer, ns: str) -> None:
    out = in_netns(ns, static_site, server)
    assert out["build"]["status"] == "ready", story(out["build"], out["events"])
    logs = [e.get("content") or "" for e in out["events"]]
    assert any("no Dockerfile: building a static app" in line for line in logs)
    assert "static site says hi" in (out["page"] or "")
