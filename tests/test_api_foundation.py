"""The HTTP conventions every endpoint shares: auth, errors, request ids, OpenAPI."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from hypeman import AuthenticationError, Hypeman
from pydantic import BaseModel, Field

from ember.api.app import UNLIMITED_BODY_PATHS, create_app
from ember.api.errors import install_error_handlers
from ember.api.middleware import BodyLimitMiddleware
from ember.config import Settings
from ember.errors import Conflict, NotFound
from ember.testkit.ember_server import EmberServer

pytestmark = pytest.mark.server  # starts a real `ember serve`


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
    assert answer.headers["server-timing"].startswith("app;dur=")  # the server's own time
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


# ---- request body limit ----------------------------------------------------------------


def limited_app(limit: int = 1024) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=limit, exempt=("/v2/",))

    @app.post("/things")
    def create(body: Body) -> Body:
        return body

    @app.post("/v2/blob")
    async def blob(request: Request) -> dict[str, int]:
        return {"size": sum([len(chunk) async for chunk in request.stream()])}

    @app.post("/stream")
    async def stream(request: Request) -> dict[str, int]:
        return {"size": sum([len(chunk) async for chunk in request.stream()])}

    return TestClient(app, raise_server_exceptions=False)


def pieces(total: int, size: int = 256) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b"x" * size


def test_body_over_the_limit_is_a_413() -> None:
    client = limited_app()
    assert client.post("/things", json={"size": 1, "name": "a"}).status_code == 200
    declared = client.post("/things", content=b"x" * 2048, headers={"content-type": "json"})
    assert declared.status_code == 413
    assert declared.json() == {
        "code": "payload_too_large",
        "message": "request body is larger than 1024 bytes",
    }
    # No Content-Length (chunked): counted as it is read, refused past the limit.
    chunked = client.post("/things", content=pieces(4096))
    assert chunked.status_code == 413 and chunked.json()["code"] == "payload_too_large"
    streamed = client.post("/stream", content=pieces(4096))  # read by the route itself
    assert streamed.status_code == 413 and streamed.json()["code"] == "payload_too_large"
    assert client.post("/stream", content=pieces(512)).json() == {"size": 512}


def test_body_limit_spares_exempt_paths() -> None:
    client = limited_app()
    assert client.post("/v2/blob", content=b"x" * 10_000).json() == {"size": 10_000}
    assert client.post("/v2/blob", content=pieces(10_240)).json() == {"size": 10_240}


def raw_request(server: EmberServer, head: str, body: bytes = b"") -> bytes:
    """Send a request by hand (a body may be absent though declared) and read the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer


def test_server_refuses_a_large_body_before_reading_it(ember_server: EmberServer) -> None:
    token = ember_server.token()
    # 50 MB announced, none sent: the answer comes at once, from the headers alone.
    answer = raw_request(
        ember_server,
        f"POST /images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b'"code":"payload_too_large"' in answer
    # Chunked: refused once the limit (1 MiB by default) is passed.
    chunk = b"x" * 65536
    body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 17
    answer = raw_request(
        ember_server,
        f"POST /images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        body,
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer
    # Blob uploads to the registry are not limited.
    blob = os.urandom(3 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    pushed = httpx.post(
        f"{ember_server.url}/v2/big/blob/blobs/uploads/?digest={digest}",
        content=blob,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert pushed.status_code == 201


# ---- OpenAPI ---------------------------------------------------------------------------


def test_openapi_documents_auth_and_real_errors(tmp_path: Path) -> None:
    spec = create_app(Settings(data_dir=tmp_path, runtime_dir=tmp_path / "run")).openapi()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A token minted by `ember token` (HS256 JWT)",
    }
    assert set(spec["components"]["schemas"]["Error"]["required"]) == {"code", "message"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert '"422"' not in json.dumps(spec)  # validation errors are answered as 400

    error = {"$ref": "#/components/schemas/Error"}
    operations = [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if not path.startswith("/v2/")
    ]
    for path, method, op in operations:
        for status, answer in op["responses"].items():
            if status.startswith(("4", "5")):
                assert answer["content"]["application/json"]["schema"] == error, (path, status)
        if path != "/health":
            assert op["security"] == [{"bearerAuth": []}], (path, method)
            assert "401" in op["responses"], (path, method)
        if "requestBody" in op:
            assert "400" in op["responses"], (path, method)
            limited = not path.startswith(UNLIMITED_BODY_PATHS)
            assert ("413" in op["responses"]) == limited, (path, method)

    images = spec["paths"]["/images/{name}"]
    assert {"400", "401", "404", "409"} <= images["delete"]["responses"].keys()
    assert {"400", "401", "404"} <= images["get"]["responses"].keys()
    assert "security" not in spec["paths"]["/health"]["get"]
    registry = spec["paths"]["/v2/{path}"]["get"]
    assert {"bearerAuth": []} in registry["security"] and "416" in registry["responses"]


def test_openapi_describes_every_answer_field(tmp_path: Path) -> None:
    """Answers that leave unset plain-string fields out still document all their fields."""
    schemas = create_app(Settings(data_dir=tmp_path, runtime_dir=tmp_path / "run")).openapi()[
        "components"
    ]["schemas"]
    for name in ("Instance", "InstanceNetwork", "AutoStandbyStatus", "HealthStatus"):
        assert schemas[name].get("properties"), name
    instance = schemas["Instance"]["properties"]
    assert {"hotplug_size", "disk_io_bps", "exit_message", "network", "health_status"} <= set(
        instance
    )
    # What the spec requires, and what every answer carries besides (never left out).
    assert {"id", "name", "image", "state", "created_at", "expires_at", "network"} <= set(
        schemas["Instance"]["required"]
    )
    assert not {"hotplug_size", "restart_policy", "health_status"} & set(
        schemas["Instance"]["required"]
    )


def test_hang_ups_and_refused_upgrades_are_info_lines(ember_server: EmberServer) -> None:
    """A client giving up mid-upload and a refused WebSocket upgrade are the client's doing:
    one info line each in the server log, no ERROR and no traceback."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    token = ember_server.token()
    base = ember_server.url.replace("http://", "ws://")
    for auth in ("Bearer nonsense", f"Bearer {token}"):  # 401, then 404 (no such instance)
        with pytest.raises(InvalidStatus):
            connect(f"{base}/instances/absent/exec", additional_headers={"Authorization": auth})
    upload = httpx.post(f"{ember_server.url}/v2/gone/app/blobs/uploads/",
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    for method, target in (("PATCH", upload.headers["location"]),
                           ("POST", "/volumes/from-archive?name=gone&size_gb=1")):  # fmt: skip
        with socket.create_connection(("127.0.0.1", ember_server.port)) as conn:
            conn.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}"
                         "\r\nContent-Type: application/gzip\r\nContent-Length: 1000000\r\n\r\n"
                         .encode() + b"\x1f\x8b" + bytes(4096))  # fmt: skip
            conn.shutdown(socket.SHUT_WR)  # the rest of the body never comes
            conn.recv(4096)  # the server's answer or its close: the request is over
    assert httpx.get(f"{ember_server.url}/health").status_code == 200
    log = (ember_server.data_dir.parent / f"ember-{ember_server.port}.log").read_text()
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]
    assert log.count("WebSocket upgrade refused with an HTTP error answer") == 2
    assert log.count("client hung up before the request body ended") == 2
