"""An OCI distribution (registry v2) client: manifests and blobs over httpx, both ways
(pulls fetch them, pushes upload them).

Auth follows the registry's challenge: a request goes out anonymously (or with
the token cached for its scope); a 401 with `WWW-Authenticate: Bearer realm=...`
sends us to the token service (with Basic credentials when we have some), a
`Basic` challenge gets the credentials directly. Credentials come from the
request (borrowed for one pull, never stored) or `~/.docker/config.json`.
Plain HTTP is used only for loopback registries and those configured as
insecure. Only connection failures, 5xx and 429 are retried, with backoff.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import ipaddress
import json
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from ember.errors import EmberError, InvalidArgument
from ember.images.blobs import BlobStore, DigestMismatch
from ember.images.reference import DIGEST_RE, ImageRef

log = logging.getLogger("ember.images.registry")

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = set(MANIFEST_TYPES[:2])
DOCKER_HUB = "registry-1.docker.io"
MAX_ATTEMPTS = 4
MAX_RETRY_AFTER = 30.0
MAX_MANIFEST_BYTES = 4 << 20  # containerd's limit: a manifest is JSON, never this big
CHUNK = 1 << 20
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]+$")

PULL, PUSH = "pull", "pull,push"  # the token scopes' actions
Progress = Callable[[int], None]
"""Called with each chunk's size as a blob arrives; negative to take back a failed attempt."""
Body = Callable[[], bytes | AsyncIterator[bytes]]
"""A request body, made anew for each attempt (a stream cannot be sent twice)."""


@dataclass(frozen=True)
class Credentials:
    """Registry credentials, checked when made so a request carrying bad ones is a 400
    naming the field (as the API spells it), not a pull that fails later inside httpx."""

    username: str | None = None
    password: str | None = None
    token: str | None = None  # a bearer token to send as is

    def __post_init__(self) -> None:
        # Basic auth carries UTF-8 (RFC 7617), but no control characters, and the user
        # name ends at the first colon.
        for name, value in (("username", self.username), ("password", self.password)):
            if value is not None and _CONTROL.search(value):
                raise InvalidArgument(f"credentials.{name}: must not contain control characters")
        if self.username and ":" in self.username:
            raise InvalidArgument("credentials.username: must not contain ':'")
        # A bearer token goes into a header as is: visible ASCII only (RFC 6750 b64token).
        if self.token is not None and not _TOKEN.match(self.token):
            raise InvalidArgument(
                "credentials.registry_token: must be printable ASCII with no spaces "
                "(letters, digits and -._~+/=)"
            )


class RegistryError(EmberError):
    code = "registry_error"


@dataclass
class Manifest:
    digest: str
    media_type: str
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return value


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default context (certifi's CAs), built once: building one costs ~20 ms,
    most of the time a `POST /images` of a ready tag takes to ask if the tag moved."""
    return httpx.create_ssl_context()


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def docker_config_credentials(registry: str, path: Path | None = None) -> Credentials | None:
    """Basic credentials for `registry` from a Docker config file, if it has some."""
    config_path = path or Path.home() / ".docker" / "config.json"
    try:
        auths = json.loads(config_path.read_text()).get("auths", {})
    except (OSError, ValueError):
        return None
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == "docker.io":
        keys.append("https://index.docker.io/v1/")
    for key in keys:
        entry = auths.get(key)
        encoded = entry.get("auth") if isinstance(entry, dict) else None
        if encoded:
            try:
                user, _, password = base64.b64decode(encoded).decode().partition(":")
                return Credentials(username=user, password=password)
            except (ValueError, InvalidArgument):
                log.warning("ignoring malformed auth for %s in %s", key, config_path)
    return None


@dataclass
class RegistryClient:
    insecure: list[str] = field(default_factory=list)
    credentials: Credentials | None = None
    docker_config: Path | None = None
    timeout: float = 60.0
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    _http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> RegistryClient:
        self._http = httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=True, verify=_tls_context()
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()

    # ---- public API ------------------------------------------------------------------

    async def get_manifest(self, ref: ImageRef, reference: str | None = None) -> Manifest:
        reference = reference or ref.reference
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        response = await self._request(ref, f"manifests/{reference}", headers)
        body = response.content
        if len(body) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"registry {ref.registry}: manifest {reference} is too large")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(
                f"registry {ref.registry}: manifest {reference} failed verification ({digest})"
            )
        manifest = Manifest(digest, "", body)
        header_type = response.headers.get("content-type", "").split(";")[0].strip()
        manifest.media_type = str(manifest.json().get("mediaType") or header_type)
        return manifest

    async def resolve_digest(self, ref: ImageRef, attempts: int = MAX_ATTEMPTS) -> str:
        """The digest `ref` names now, from a `HEAD` of its manifest (no body, and no pull
        counted against Docker Hub's rate limit); a `GET` if the registry gives no digest."""
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        path = f"manifests/{ref.reference}"
        try:
            response = await self._request(ref, path, headers, method="HEAD", attempts=attempts)
            digest = str(response.headers.get("docker-content-digest", ""))
        except _HeadRefused:
            digest = ""
        if DIGEST_RE.match(digest):
            return digest
        return (await self.get_manifest(ref)).digest

    async def fetch_blob(
        self,
        ref: ImageRef,
        digest: str,
        blobs: BlobStore,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Download one blob into the store, verified against its digest."""
        if blobs.has(digest):
            return
        for attempt in range(1, MAX_ATTEMPTS + 1):
            received = 0
            try:
                async with self._stream(ref, f"blobs/{digest}") as response:
                    with blobs.writer(digest, size) as blob:
                        async for chunk in response.aiter_bytes(CHUNK):
                            blob.write(chunk)
                            received += len(chunk)
                            if progress:
                                progress(len(chunk))
                return
            except DigestMismatch as exc:
                raise RegistryError(f"registry {ref.registry}: {exc.message}") from exc
            except (httpx.TransportError, _Retryable) as exc:
                if progress and received:
                    progress(-received)  # the next attempt starts from zero
                if attempt == MAX_ATTEMPTS:
                    raise self._unreachable(ref, exc) from exc
                await asyncio.sleep(_backoff(exc, attempt))

    async def has_blob(self, ref: ImageRef, digest: str) -> bool:
        """Whether the registry holds `digest` in `ref`'s repository (asked with push rights:
        the answer decides whether we upload it)."""
        try:
            await self._request(ref, f"blobs/{digest}", {}, method="HEAD", scope=PUSH)
        except MissingInRegistry:
            return False
        return True

    async def upload_blob(self, ref: ImageRef, digest: str, size: int, body: Body) -> None:
        """Upload one blob: an upload session (`POST`), then the whole blob in its `PUT`."""
        start = await self._request(ref, "blobs/uploads/", {}, method="POST", scope=PUSH)
        location = start.headers.get("location")
        if not location:
            raise RegistryError(f"registry {ref.registry}: upload started with no Location")
        url = str(start.url.join(location))
        url += ("&" if "?" in url else "?") + urlencode({"digest": digest})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        await self._request(ref, url, headers, method="PUT", scope=PUSH, body=body)

    async def put_manifest(self, ref: ImageRef, media_type: str, body: bytes) -> str:
        """Store a manifest under `ref`'s tag; the digest the registry answers with."""
        headers = {"Content-Type": media_type}
        path = f"manifests/{ref.reference}"
        response = await self._request(ref, path, headers, "PUT", scope=PUSH, body=lambda: body)
        return str(response.headers.get("docker-content-digest", ""))

    # ---- transport -------------------------------------------------------------------

    def _base_url(self, registry: str) -> str:
        host = DOCKER_HUB if registry == "docker.io" else registry
        plain = _is_loopback(registry) or registry in self.insecure
        return f"{'http' if plain else 'https'}://{host}/v2/{{}}"

    def _url(self, ref: ImageRef, path: str) -> str:
        """`path` under the repository, or as is if it is a whole URL (an upload's)."""
        if path.startswith(("http://", "https://")):
            return path
        return self._base_url(ref.registry).format(f"{ref.repository}/{path}")

    def _unreachable(self, ref: ImageRef, exc: Exception) -> RegistryError:
        if isinstance(exc, _Retryable):
            return RegistryError(f"registry {ref.registry}: {exc}")
        return RegistryError(f"cannot reach registry {ref.registry}: {_transport_reason(exc)}")

    async def _request(
        self,
        ref: ImageRef,
        path: str,
        headers: dict[str, str],
        method: str = "GET",
        attempts: int = MAX_ATTEMPTS,
        scope: str = PULL,
        body: Body | None = None,
    ) -> httpx.Response:
        for attempt in range(1, attempts + 1):
            try:
                response = await self._send(ref, method, path, headers, scope, body)
                await response.aread()
                self._raise_for(ref, path, response)
                return response
            except (httpx.TransportError, _Retryable) as exc:
                if attempt == attempts:
                    raise self._unreachable(ref, exc) from exc
                await asyncio.sleep(_backoff(exc, attempt))
        raise AssertionError("unreachable")

    def _stream(self, ref: ImageRef, path: str) -> _StreamContext:
        return _StreamContext(self, ref, path)

    async def _send(
        self,
        ref: ImageRef,
        method: str,
        path: str,
        headers: dict[str, str],
        actions: str = PULL,
        body: Body | None = None,
    ) -> httpx.Response:
        """One request, answering an auth challenge once; the response body is left unread."""
        assert self._http is not None, "use RegistryClient as an async context manager"
        url = self._url(ref, path)
        scope = f"repository:{ref.repository}:{actions}"
        auth = self._cached_auth(ref.registry, scope)
        request = self._http.build_request(
            method, url, headers={**headers, **auth}, content=body() if body else None
        )
        response = await self._http.send(request, stream=True)
        fixed_token = self.credentials is not None and self.credentials.token
        # Challenged anonymously, or a cached token has expired (Docker Hub's last 5 min).
        if response.status_code == 401 and not fixed_token:
            challenge = response.headers.get("www-authenticate", "")
            await response.aclose()
            self._tokens.pop((ref.registry, scope), None)
            auth = await self._answer_challenge(ref, challenge, scope)
            request = self._http.build_request(
                method, url, headers={**headers, **auth}, content=body() if body else None
            )
            response = await self._http.send(request, stream=True)
        return response

    def _cached_auth(self, registry: str, scope: str) -> dict[str, str]:
        if self.credentials and self.credentials.token:
            return {"Authorization": f"Bearer {self.credentials.token}"}
        token = self._tokens.get((registry, scope))
        return {"Authorization": token} if token else {}

    def _basic(self, registry: str) -> Credentials | None:
        if self.credentials and self.credentials.username:
            return self.credentials
        return docker_config_credentials(registry, self.docker_config)

    async def _answer_challenge(self, ref: ImageRef, challenge: str, scope: str) -> dict[str, str]:
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        basic = self._basic(ref.registry)
        if scheme.lower() == "basic":
            if basic is None:
                raise RegistryError(f"registry {ref.registry}: unauthorized (401): no credentials")
            value = base64.b64encode(f"{basic.username}:{basic.password}".encode()).decode()
            header = f"Basic {value}"
        elif scheme.lower() == "bearer" and "realm" in params:
            header = f"Bearer {await self._fetch_token(ref, params, basic, scope)}"
        else:
            raise RegistryError(
                f"registry {ref.registry}: unsupported auth challenge {challenge!r}"
            )
        self._tokens[(ref.registry, scope)] = header
        return {"Authorization": header}

    async def _fetch_token(
        self, ref: ImageRef, params: dict[str, str], basic: Credentials | None, scope: str
    ) -> str:
        assert self._http is not None
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        auth = (basic.username or "", basic.password or "") if basic else None
        try:
            response = await self._http.get(params["realm"], params=query, auth=auth)
        except httpx.TransportError as exc:
            reason = _transport_reason(exc)
            raise RegistryError(f"cannot reach token service {params['realm']}: {reason}") from exc
        if response.status_code != 200:
            raise RegistryError(
                f"registry {ref.registry}: token service refused ({response.status_code}): "
                f"{response.text[:200]}"
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not token:
            raise RegistryError(f"registry {ref.registry}: token service answered no token")
        return str(token)

    def _raise_for(self, ref: ImageRef, path: str, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        if path.startswith(("http://", "https://")):
            what = f"an upload to {ref.repository}"
        else:
            what = f"{ref.repository}:{path.split('/', 1)[1]}" if "/" in path else path
        if status in (405, 501) and response.request.method == "HEAD":
            raise _HeadRefused(f"registry {ref.registry}: HEAD refused ({status}) for {what}")
        if status == 429 or status >= 500:
            retry_after = response.headers.get("retry-after", "")
            delay = min(float(retry_after), MAX_RETRY_AFTER) if retry_after.isdigit() else None
            reason = "rate limited (429)" if status == 429 else f"server error ({status})"
            raise _Retryable(f"{reason} for {what}", delay)
        if status == 401:
            raise RegistryError(f"registry {ref.registry}: unauthorized (401) for {what}")
        if status == 403:
            raise RegistryError(f"registry {ref.registry}: access denied (403) for {what}")
        if status == 404:
            kind = "manifest" if path.startswith("manifests/") else "blob"
            raise MissingInRegistry(f"registry {ref.registry}: {kind} for {what} not found (404)")
        raise RegistryError(f"registry {ref.registry}: unexpected {status} for {what}")


def _backoff(exc: Exception, attempt: int) -> float:
    """Seconds before the next attempt: the server's Retry-After if it gave one."""
    if isinstance(exc, _Retryable) and exc.retry_after is not None:
        return exc.retry_after
    return 0.25 * 2.0**attempt


def _transport_reason(exc: Exception) -> str:
    """`connection refused` rather than `[Errno 111] Connection refused`."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            # asyncio's strerror is "Connect call failed (...)"; the errno says why.
            return (os.strerror(cause.errno) if cause.errno else str(cause.strerror)).lower()
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__


class MissingInRegistry(RegistryError):
    """A 404: the manifest or blob asked for is not in the repository."""


class _HeadRefused(RegistryError):
    """A registry (or proxy) that does not answer HEAD: ask with GET instead."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _StreamContext:
    """`async with client._stream(...)`: a checked, streaming blob response."""

    def __init__(self, client: RegistryClient, ref: ImageRef, path: str) -> None:
        self.client, self.ref, self.path = client, ref, path
        self.response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        self.response = await self.client._send(self.ref, "GET", self.path, {})
        if self.response.status_code >= 400:
            await self.response.aread()
            await self.response.aclose()
            self.client._raise_for(self.ref, self.path, self.response)
        return self.response

    async def __aexit__(self, *exc: object) -> None:
        if self.response is not None:
            await self.response.aclose()
