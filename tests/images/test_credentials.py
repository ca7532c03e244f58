"""Registry credentials borrowed by `POST /images`: refused up front when they cannot be sent."""

from __future__ import annotations

import httpx
import pytest

from ember.errors import InvalidArgument
from ember.images.distribution import Credentials
from ember.testkit import hello_image, push
from ember.testkit.ember_server import EmberServer
from ember.testkit.registry_server import RegistryServer
from tests.conftest import wait_image
from tests.images.conftest import PASSWORD, USER

pytestmark = pytest.mark.server  # starts a real `ember serve`


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"token": "tökén"}, "credentials.registry_token"),
        ({"token": "two words"}, "credentials.registry_token"),
        ({"username": "me\n", "password": "x"}, "credentials.username"),
        ({"username": "me", "password": "p\x00ss"}, "credentials.password"),
        ({"username": "a:b", "password": "x"}, "credentials.username"),
    ],
)
def test_unsendable_credentials_are_refused(fields: dict[str, str], named: str) -> None:
    with pytest.raises(InvalidArgument, match=named):
        Credentials(**fields)


def test_utf8_basic_credentials_and_jwt_tokens_are_accepted() -> None:
    Credentials(username="jösé", password="pässwörd")  # Basic auth carries UTF-8
    Credentials(token="eyJhbGciOi.eyJzdWIi-_.sig+/=")


def test_non_ascii_token_is_a_400_before_any_pull(ember_server: EmberServer) -> None:
    http = httpx.Client(
        base_url=ember_server.url, headers={"Authorization": f"Bearer {ember_server.token()}"}
    )
    answer = http.post(
        "/images", json={"name": "alpine:3.20", "credentials": {"registry_token": "tökén"}}
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "bad_request"
    assert answer.json()["message"].startswith("credentials.registry_token:")
    assert http.get("/images").json() == []  # nothing was recorded or queued


def test_non_ascii_password_fails_as_unauthorized_not_internally(
    ember_server: EmberServer, basic_registry: RegistryServer
) -> None:
    push(hello_image(), basic_registry.url, "private/hello", "v1", basic=(USER, PASSWORD))
    http = httpx.Client(
        base_url=ember_server.url, headers={"Authorization": f"Bearer {ember_server.token()}"}
    )
    name = f"{basic_registry.host}/private/hello:v1"
    credentials = {"username": USER, "password": "pässwörd"}
    answer = http.post("/images", json={"name": name, "credentials": credentials})
    assert answer.status_code == 202
    failed = wait_image(ember_server, name)
    assert failed["status"] == "failed"
    assert "internal error" not in str(failed["error"]) and "401" in str(failed["error"])
