from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from tests.conftest import push_to_ember
from tests.spec.openapi_check import Walk, ember_extensions


def open_walk(server: EmberServer) -> Walk:
    client = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token()}"}, timeout=120
    )
    return Walk(client, ember_extensions(client.get("/openapi.json").json()))


@pytest.fixture
def walk(ember_server: EmberServer) -> Iterator[Walk]:
    walker = open_walk(ember_server)
    try:
        yield walker
    finally:
        walker.client.close()


@pytest.fixture
def hello_ready(ember_server: EmberServer) -> str:
    return push_to_ember(ember_server, hello_image(), "hello", "latest")
