"""The HTTP conventions every endpoint shares: auth, errors, request ids, OpenAPI."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypeman import AuthenticationError, Hypeman
from pydantic import BaseModel, Field

from ember.api.errors import install_error_handlers
from ember.errors import Conflict, NotFound
from ember.testkit.ember_server import EmberServer


def test_health_and_auth_with_official_client(ember_server: EmberServer) -> None:
    client = Hypeman(base_url=ember_server.url, api_key=ember_server.token(), max_retries=0)
    assert client.health.check().status == "ok"

    anonymous = httpx.get(f"{ember_server.url}/images")
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthorized"
    assert "Bearer" in anonymous.json()["message"]

    bad = Hypeman(base_url=ember_server.url, api_key="not-a-jwt", max_retries=0)
    with pytest.raises(AuthenticationError):
        bad.images.list()
    assert bad.health.check().status == "ok"  # /health stays open

    expired = httpx.get(
        f"{ember_server.url}/images",
        headers={"Authorization": f"Bearer {ember_server.token(ttl=-10)}"},
    )
    assert expired.status_code == 401 and "expired" in expired.json()["message"]


def test_request_ids_and_openapi(ember_server: EmberServer) -> None:
    answer = httpx.get(f"{ember_server.url}/health", headers={"X-Request-Id": "abc-123"})
    assert answer.headers["x-request-id"] == "abc-123"
    generated = httpx.get(f"{ember_server.url}/health").headers["x-request-id"]
    assert len(generated) == 16
    spec = httpx.get(f"{ember_server.url}/openapi.json").json()
    assert "/health" in spec["paths"]
    assert "/images" in spec["paths"]


def test_token_command_mints_a_working_token(ember_server: EmberServer) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "EMBER_DATA_DIR": str(ember_server.data_dir)}
    token = subprocess.run(
        [sys.executable, "-m", "ember.cli.main", "token"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    answer = httpx.get(f"{ember_server.url}/images", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200


class Body(BaseModel):
    size: int = Field(gt=0)
    name: str


def error_app() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/things")
    def create(body: Body) -> Body:
        return body

    @app.get("/missing")
    def missing() -> None:
        raise NotFound("thing 'x' not found")

    @app.get("/busy")
    def busy() -> None:
        raise Conflict("thing is in use")

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    return TestClient(app, raise_server_exceptions=False)


def test_validation_errors_are_400_naming_the_field() -> None:
    answer = error_app().post("/things", json={"size": 0, "name": "a"})
    assert answer.status_code == 400
    assert answer.json()["code"] == "bad_request"
    assert answer.json()["message"].startswith("size:")
    missing = error_app().post("/things", json={"size": 1})
    assert missing.status_code == 400 and "name" in missing.json()["message"]
    not_json = error_app().post(
        "/things", content=b"{", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400


def test_domain_errors_map_to_statuses() -> None:
    client = error_app()
    assert client.get("/missing").status_code == 404
    assert client.get("/missing").json() == {"code": "not_found", "message": "thing 'x' not found"}
    assert client.get("/busy").status_code == 409
    assert client.get("/nowhere").json()["code"] == "not_found"
    assert client.delete("/missing").status_code == 405


def test_unexpected_errors_hide_internals() -> None:
    answer = error_app().get("/boom")
    assert answer.status_code == 500
    assert answer.json()["code"] == "internal_error"
    assert "secret" not in answer.text


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ember.config import Settings

    monkeypatch.setenv("EMBER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EMBER_LISTEN", "0.0.0.0:9000")
    settings = Settings()
    assert settings.data_dir == tmp_path and settings.port == 9000 and settings.host == "0.0.0.0"
