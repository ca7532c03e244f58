"""What `/openapi.json` and the router itself answer: the registry's errors in the OCI
shape, 405 with `Allow`, and the name rule in the request schemas."""

from __future__ import annotations

import httpx
import pytest

from ember.testkit.ember_server import EmberServer
from ember.validation import NAME_RE

pytestmark = pytest.mark.server  # starts a real `ember serve`


def test_405_names_the_allowed_methods(shared_server: EmberServer) -> None:
    headers = {"Authorization": f"Bearer {shared_server.token()}"}
    answer = httpx.put(f"{shared_server.url}/instances", headers=headers)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, POST"
    assert answer.json()["code"] == "method_not_allowed"


def test_registry_errors_are_in_the_oci_shape(shared_server: EmberServer) -> None:
    headers = {"Authorization": f"Bearer {shared_server.token()}"}
    base = f"{shared_server.url}/v2/"
    refused = httpx.put(base, headers=headers)
    assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")
    assert refused.json()["errors"][0]["code"] == "UNSUPPORTED"
    wrong_method = httpx.delete(f"{base}demo/tags/list", headers=headers)
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "GET, HEAD")
    router_405 = httpx.request("OPTIONS", f"{base}demo/tags/list", headers=headers)
    assert router_405.status_code == 405 and "allow" in router_405.headers
    assert router_405.json()["errors"][0]["code"] == "UNSUPPORTED"
    missing = httpx.get(f"{base}demo/manifests/latest", headers=headers)
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"]


def test_openapi_documents_names_and_errors(shared_server: EmberServer) -> None:
    document = httpx.get(f"{shared_server.url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    for model in ("CreateVolumeRequest", "CreateIngressRequest", "CreateInstanceBody"):
        assert schemas[model]["properties"]["name"]["pattern"] == NAME_RE.pattern, model
    paths = document["paths"]
    assert {"404", "409"} <= paths["/volumes/{id}"]["delete"]["responses"].keys()
    assert {"404", "409"} <= paths["/ingresses/{id}"]["delete"]["responses"].keys()
    assert "405" in paths["/v2/{path}"]["put"]["responses"]
    # Optional objects the spec does not make nullable are documented as plain objects.
    policy = schemas["Instance"]["properties"]["restart_policy"]
    assert policy["$ref"] == "#/components/schemas/RestartPolicy" and "anyOf" not in policy
