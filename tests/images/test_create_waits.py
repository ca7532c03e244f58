"""`POST /instances` right after `POST /images` waits for the pull (Hypeman's behaviour:
clients create the image and the instance back to back) instead of refusing at once."""

from __future__ import annotations

import httpx
import pytest

from ember.testkit import hello_image, push
from ember.testkit.ember_server import EmberServer
from ember.testkit.registry_server import RegistryServer

SIZE = {"size": "256MB", "vcpus": 1}


def client(server: EmberServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.token()}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=120)


@pytest.mark.vm
def test_instance_created_while_its_image_is_pulled(
    ember_server: EmberServer, registry: RegistryServer
) -> None:
    push(hello_image(), registry.url, "waited/hello", "v1")
    name = f"{registry.host}/waited/hello:v1"
    with client(ember_server) as http:
        image = http.post("/images", json={"name": name})
        assert image.status_code == 202 and image.json()["status"] != "ready", image.text
        body = {"name": "waited", "image": name, "cmd": ["/hello", "serve"], **SIZE}
        created = http.post("/instances", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["state"] in ("Initializing", "Running")


def test_a_pull_that_fails_is_not_ready(
    ember_server: EmberServer, registry: RegistryServer
) -> None:
    """The wait ends when the pull fails: the answer says why, not a timeout."""
    name = f"{registry.host}/waited/absent:v1"
    with client(ember_server) as http:
        assert http.post("/images", json={"name": name}).status_code == 202
        refused = http.post("/instances", json={"name": "never", "image": name, **SIZE})
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "image_not_ready"
        assert "failed" in refused.json()["message"]
        assert http.get(f"/images/{name}").json()["status"] == "failed"
