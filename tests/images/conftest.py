"""Independent registries for pull tests: Debian's docker-registry, open or behind auth."""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import bcrypt
import httpx
import jwt
import pytest

from ember.testkit.registry_server import RegistryServer, free_port, start_registry

USER, PASSWORD = "tester", "s3cret-pass"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    root = tmp_path_factory.mktemp("basic-registry")
    htpasswd = root / "htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt()).decode()}\n")
    server = start_registry(root, htpasswd=htpasswd)
    try:
        yield server
    finally:
        server.stop()


class TokenService:
    """A bearer token service like Docker Hub's: Basic credentials in, signed JWT out."""

    def __init__(self, root: Path) -> None:
        self.key, self.cert = root / "token.key", root / "token.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=ember-test-token", "-keyout", str(self.key), "-out", str(self.cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        self.x5c = base64.b64encode(der).decode()
        self.port = free_port()
        self.requests: list[dict[str, list[str]]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def token(self, scope: str) -> str:
        kind, name, actions = scope.split(":")
        now = datetime.datetime.now(datetime.UTC)
        claims = {
            "iss": "ember-test-issuer", "sub": USER, "aud": "ember-test",
            "iat": now, "nbf": now - datetime.timedelta(seconds=30),
            "exp": now + datetime.timedelta(minutes=5), "jti": secrets.token_hex(8),
            "access": [{"type": kind, "name": name, "actions": actions.split(",")}],
        }  # fmt: skip
        return jwt.encode(claims, self.key.read_bytes(), "RS256", headers={"x5c": [self.x5c]})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                service.requests.append(query)
                expected = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": service.token(query["scope"][0])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RegistryServer, TokenService]]:
    root = tmp_path_factory.mktemp("token-registry")
    tokens = TokenService(root)
    auth = (
        f"auth:\n  token:\n    realm: {tokens.realm}\n    service: ember-test\n"
        f"    issuer: ember-test-issuer\n    rootcertbundle: {tokens.cert}\n"
    )
    server = start_registry(root, extra_config=auth)
    try:
        yield server, tokens
    finally:
        server.stop()
        tokens.server.shutdown()


class GatedProxy:
    """A proxy in front of a registry that sends each blob only when the test allows it.

    Manifests pass straight through; a blob GET waits for a permit (`release`) before
    its body is sent, so a test can hold a pull at a known point: no sleeps, no timing.
    `served` lists the blobs sent in full, in order; `heads` the HEAD requests.
    """

    def __init__(self, upstream: RegistryServer) -> None:
        self.upstream = upstream
        self.permits = threading.Semaphore(0)
        self.served: list[str] = []
        self.heads: list[str] = []  # HEAD requests, passed through ungated
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def release(self, count: int = 1) -> None:
        self.permits.release(count)

    def stop(self) -> None:
        self.release(1000)  # nothing stays blocked
        self.server.shutdown()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                wanted = ("accept", "authorization")
                headers = {k: v for k, v in self.headers.items() if k.lower() in wanted}
                answer = httpx.get(f"{proxy.upstream.url}{self.path}", headers=headers)
                blob = "/blobs/sha256:" in self.path and answer.status_code == 200
                if blob:
                    proxy.permits.acquire(timeout=120)
                self.send_response(answer.status_code)
                for key in ("content-type", "docker-content-digest", "www-authenticate"):
                    if key in answer.headers:
                        self.send_header(key, answer.headers[key])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)
                self.wfile.flush()
                if blob:
                    proxy.served.append(self.path.rsplit("/", 1)[1])

            def do_HEAD(self) -> None:
                wanted = ("accept", "authorization")
                headers = {k: v for k, v in self.headers.items() if k.lower() in wanted}
                answer = httpx.head(f"{proxy.upstream.url}{self.path}", headers=headers)
                proxy.heads.append(self.path)
                self.send_response(answer.status_code)
                for key in ("content-type", "docker-content-digest", "www-authenticate"):
                    if key in answer.headers:
                        self.send_header(key, answer.headers[key])
                self.send_header("Content-Length", answer.headers.get("content-length", "0"))
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def gated(registry: RegistryServer) -> Iterator[GatedProxy]:
    proxy = GatedProxy(registry)
    try:
        yield proxy
    finally:
        proxy.stop()
