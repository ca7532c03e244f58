"""The autoscale and schedule surfaces of a real server (no VM): refusals with their
codes before anything is made, and the routes in `/openapi.json`."""

from __future__ import annotations

import httpx

from ember.testkit.ember_server import EmberServer


def client(server: EmberServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.token()}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def test_refusals_and_the_documented_routes(ember_server: EmberServer) -> None:
    with client(ember_server) as api:
        body = {"max_size": 2, "create_args": {"image": "x"}}
        missing = api.put("/service-groups/nope/autoscale", json=body)
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        typo = api.put("/service-groups/nope/autoscale", json={**body, "max_sise": 3})
        assert typo.status_code == 400
        bad = api.post("/instances", json={"name": "a", "image": "x", "schedules": [
            {"name": "nightly", "when": "at dawn", "action": "stop"}]})  # fmt: skip
        assert bad.status_code == 400, bad.text
        assert "schedules[nightly].when: 'at dawn' is not a systemd" in bad.json()["message"]
        assert api.get("/instances").json() == []  # nothing half-made
        paths = api.get("/openapi.json").json()["paths"]
    for path in ("/service-groups/{id}/autoscale", "/service-groups/{id}/autoscale/policies",
                 "/service-groups/{id}/autoscale/policies/{name}",
                 "/service-groups/{id}/autoscale/decisions"):  # fmt: skip
        assert path in paths
    assert "Ember extension" in paths["/service-groups/{id}/autoscale"]["put"]["tags"][0]
