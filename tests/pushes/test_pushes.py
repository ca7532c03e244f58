"""`/pushes` against real registries: Debian's `docker-registry`, open and behind htpasswd,
with Ember and both registries inside a network namespace made for the test. Every push
is pulled back into Ember (`POST /images`) and must come back with the same digest."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import bcrypt
import httpx
import pytest

from ember.testkit import hello_image, push
from ember.testkit.ember_server import EmberServer
from ember.testkit.netns import in_netns, netns
from ember.testkit.registry_server import RegistryServer, start_registry
from tests.cli.conftest import cli_env, run_cli
from tests.conftest import running_server
from tests.images.conftest import PASSWORD, USER

pytestmark = pytest.mark.server  # starts a real `ember serve`


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    with netns() as name:
        yield name


@pytest.fixture(scope="module")
def server(ns: str) -> Iterator[EmberServer]:
    # No guest networking: these tests boot no VM, the namespace is for the registries.
    with running_server(ns, env={"EMBER_NETWORK_ENABLED": "false"}) as started:
        yield started


@pytest.fixture(scope="module")
def open_registry(ns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    registry = start_registry(tmp_path_factory.mktemp("open-registry"), netns=ns)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def auth_registry(ns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    root = tmp_path_factory.mktemp("auth-registry")
    htpasswd = root / "htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt()).decode()}\n")
    registry = start_registry(root, htpasswd=htpasswd, netns=ns)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def image(ns: str, server: EmberServer) -> str:
    """A ready image in Ember (pushed into its own registry); its name."""
    built = hello_image()

    def load() -> None:
        push(built, server.url, "hello", "v1", token=server.token())

    in_netns(ns, load)
    name = f"127.0.0.1:{server.port}/hello:v1"
    assert inside(ns, server, lambda api: wait_for(api, f"/images/{name}", "ready"))
    return name


def inside(ns: str, server: EmberServer, scenario: Callable[[httpx.Client], Any]) -> Any:
    """Run `scenario` with an API client, in the namespace the server and registries share."""

    def run() -> Any:
        headers = {"Authorization": f"Bearer {server.token()}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as api:
            return scenario(api)

    return in_netns(ns, run)


def wait_for(api: httpx.Client, path: str, *done: str, timeout: float = 60) -> dict[str, Any]:
    """Poll `path` until its status is one of `done` (or ready/failed/pushed), then answer it."""
    ends = {*done, "ready", "failed", "pushed"}
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = api.get(path).json()
        if body.get("status") in ends or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def push_and_pull(
    api: httpx.Client, image: str, target: str, credentials: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Push `image` to `target`, then pull `target` back: (accepted, push, pulled)."""
    body: dict[str, Any] = {"image": image, "target": target, "insecure": True}
    if credentials:
        body["credentials"] = credentials
    created = api.post("/pushes", json=body)
    assert created.status_code == 202, created.text
    assert created.headers["location"] == f"/pushes/{created.json()['id']}"
    pushed = wait_for(api, f"/pushes/{created.json()['id']}")
    pull: dict[str, Any] = {"name": target}
    if credentials:
        pull["credentials"] = credentials
    assert api.post("/images", json=pull).status_code == 202
    return created.json(), pushed, wait_for(api, f"/images/{target}")


def test_push_to_an_open_registry_and_pull_it_back(
    ns: str, server: EmberServer, open_registry: RegistryServer, image: str
) -> None:
    target = f"{open_registry.host}/copies/hello:v1"

    def scenario(api: httpx.Client) -> None:
        source = api.get(f"/images/{image}").json()
        created, pushed, pulled = push_and_pull(api, image, target)
        assert created["status"] in ("queued", "pushing", "pushed")
        assert (created["image"], created["target"]) == (image, target)
        assert pushed["status"] == "pushed", pushed
        assert pushed["error"] is None and pushed["completed_at"] is not None
        assert pushed["digest"] == source["digest"]
        layers = json.loads(hello_image().manifest)["layers"]
        assert pushed["layers"] == len(layers)
        assert pushed["bytes"] == sum(layer["size"] for layer in layers)
        assert pulled["status"] == "ready", pulled
        assert pulled["digest"] == source["digest"]  # the same manifest, byte for byte
        assert api.get("/pushes").json()[0]["id"] == created["id"]  # newest first
        # A second push finds every blob there already and still ends pushed.
        again = api.post("/pushes", json={"image": image, "target": target})
        assert wait_for(api, f"/pushes/{again.json()['id']}")["status"] == "pushed"

    inside(ns, server, scenario)


def test_push_to_a_registry_behind_auth(
    ns: str, server: EmberServer, auth_registry: RegistryServer, image: str
) -> None:
    target = f"{auth_registry.host}/private/hello:v1"

    def scenario(api: httpx.Client) -> None:
        source = api.get(f"/images/{image}").json()
        # No credentials, then a wrong password: each fails, saying why.
        for credentials in (None, {"username": USER, "password": "wrong"}):
            body: dict[str, Any] = {"image": image, "target": target}
            if credentials:
                body["credentials"] = credentials
            refused = wait_for(api, f"/pushes/{api.post('/pushes', json=body).json()['id']}")
            assert refused["status"] == "failed", refused
            assert "unauthorized (401)" in refused["error"], refused["error"]
            assert refused["completed_at"] is not None
        credentials = {"username": USER, "password": PASSWORD}
        _, pushed, pulled = push_and_pull(api, image, target, credentials)
        assert pushed["status"] == "pushed", pushed
        assert pulled["status"] == "ready", pulled
        assert pulled["digest"] == source["digest"]

    inside(ns, server, scenario)


def test_refusals(ns: str, server: EmberServer, open_registry: RegistryServer, image: str) -> None:
    target = f"{open_registry.host}/copies/hello:v2"

    def scenario(api: httpx.Client) -> None:
        def refused(body: dict[str, Any], status: int) -> str:
            answer = api.post("/pushes", json=body)
            assert answer.status_code == status, answer.text
            return str(answer.json()["message"])

        assert "not found" in refused({"image": "nothere:v1", "target": target}, 404)
        assert refused({"image": image, "target": "Not A Ref"}, 400).startswith("target:")
        digest_target = f"{open_registry.host}/copies/hello@sha256:{'0' * 64}"
        assert "digest" in refused({"image": image, "target": digest_target}, 400)
        own = f"127.0.0.1:{server.port}/again:v1"
        assert "own registry" in refused({"image": image, "target": own}, 400)
        bad_token = {"image": image, "target": target, "credentials": {"registry_token": "a b"}}
        assert refused(bad_token, 400).startswith("credentials.registry_token")
        assert api.post("/pushes", json={"image": image}).status_code == 400
        assert api.get("/pushes/nothere").status_code == 404

    inside(ns, server, scenario)


def test_cli_push_and_its_failure(
    ns: str, server: EmberServer, auth_registry: RegistryServer, image: str
) -> None:
    """`ember push IMAGE TARGET`: the password from stdin; a refusal says why, exit 1."""
    env = cli_env(server)
    target = f"{auth_registry.host}/cli/hello:v1"
    refused = in_netns(ns, run_cli, ["push", image, target], env)
    assert refused.code == 1
    assert "unauthorized (401)" in refused.err, refused.err
    args = ["push", image, target, "-u", USER, "--password-stdin", "--json"]
    done = in_netns(ns, run_cli, args, env, PASSWORD + "\n")
    assert done.code == 0, done.err
    pushed = json.loads(done.out)
    assert (pushed["status"], pushed["target"]) == ("pushed", target)
    shown = in_netns(ns, run_cli, ["push", image, target, "-u", USER, "--password", PASSWORD], env)
    assert shown.code == 0, shown.err
    assert shown.out.split() == ["pushed", target, pushed["digest"]]
