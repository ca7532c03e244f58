"""`/v2/`: the OCI distribution API of the built-in registry (push and pull subset).

Repository names contain slashes, so one catch-all route parses the path and
dispatches; errors use the distribution spec's body (`{"errors": [...]}`),
which registry clients such as skopeo and docker understand.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel

from ember.api.auth import registry_token, verify_token
from ember.api.deps import ServicesDep
from ember.api.errors import error_responses, oci_error
from ember.api.services import Services
from ember.errors import EmberError, Unauthorized
from ember.registry import DistributionError, Registry
from ember.registry.registry import MAX_MANIFEST_BYTES

router = APIRouter(tags=["registry"])
Handler = Callable[[Request, Services, dict[str, str]], Awaitable[Response]]
_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


class OciError(BaseModel):
    code: str
    message: str


class OciErrors(BaseModel):
    """The distribution spec's error body, which registry clients read."""

    errors: list[OciError]


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        _ROUTES.append((method, re.compile(f"^{pattern}$"), handler))
        return handler

    return register


def authenticate(request: Request, svc: Services) -> None:
    if not svc.settings.auth_disabled:
        verify_token(svc.jwt_secret, registry_token(request.headers.get("authorization")))


async def distribution(path: str, request: Request, svc: ServicesDep) -> Response:
    try:
        authenticate(request, svc)
        if path.strip("/") == "":
            if request.method not in ("GET", "HEAD"):
                raise _unsupported(request, path, {"GET", "HEAD"})
            return JSONResponse({}, headers={"Docker-Distribution-API-Version": "registry/2.0"})
        allowed: set[str] = set()
        for method, pattern, handler in _ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            allowed |= {method, "HEAD"} if method == "GET" else {method}
            if method == request.method or (method, request.method) == ("GET", "HEAD"):
                params = match.groupdict()
                Registry.check_repository(params["name"])
                return await handler(request, svc, params)
        if allowed:
            raise _unsupported(request, path, allowed)
        raise DistributionError(
            404, "UNSUPPORTED", f"no such endpoint: {request.method} /v2/{path}"
        )
    except DistributionError as exc:
        return oci_error(exc.status, exc.oci_code, exc.message, exc.headers)
    except Unauthorized as exc:
        return oci_error(401, "UNAUTHORIZED", exc.message)
    except EmberError as exc:
        return oci_error(exc.status, exc.code.upper(), exc.message)


def _unsupported(request: Request, path: str, allowed: set[str]) -> DistributionError:
    """405 with the methods the path does take, as HTTP asks (`Allow`)."""
    return DistributionError(
        405,
        "UNSUPPORTED",
        f"{request.method} is not supported on /v2/{path}",
        headers={"Allow": ", ".join(sorted(allowed))},
    )


# One route per method, each with its own operation id in the OpenAPI document.
for _method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
    router.add_api_route(
        "/v2/{path:path}",
        distribution,
        methods=[_method],
        operation_id=f"distribution_{_method.lower()}",
        summary="OCI distribution API (push and pull)",
        responses=error_responses(400, 401, 404, 405, 413, 415, 416, model=OciErrors),
        # A bearer token, or (as `docker login` and `skopeo --creds` send it) Basic auth
        # with the token as the password.
        openapi_extra={"security": [{"bearerAuth": []}, {"registryBasic": []}]},
    )


def _upload_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
        "Docker-Upload-UUID": upload_id,
        "Range": f"0-{max(size - 1, 0)}",
    }


async def _receive(request: Request, svc: Services, upload_id: str) -> int:
    upload = await svc.registry.receive(
        upload_id,
        request.stream(),
        request.headers.get("content-range"),
        request.headers.get("content-length"),
    )
    return upload.size


async def _manifest_body(request: Request) -> bytes:
    """The manifest, read no further than the largest one accepted (413 past it)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_MANIFEST_BYTES:
            raise DistributionError(413, "SIZE_INVALID", "manifest is larger than 4 MiB")
    return bytes(body)


@route("GET", r"(?P<name>.+)/blobs/(?P<digest>sha256:[a-f0-9]{64})")
async def get_blob(request: Request, svc: Services, params: dict[str, str]) -> Response:
    path = svc.registry.storage.blob_path(params["digest"])
    headers = {"Docker-Content-Digest": params["digest"]}
    if request.method == "HEAD":
        headers["Content-Length"] = str(path.stat().st_size)
        return Response(headers=headers, media_type="application/octet-stream")
    return FileResponse(path, headers=headers, media_type="application/octet-stream")


@route("POST", r"(?P<name>.+)/blobs/uploads/?")
async def start_upload(request: Request, svc: Services, params: dict[str, str]) -> Response:
    name, query = params["name"], request.query_params
    mount = query.get("mount")
    if mount and svc.registry.storage.mount(mount):
        # Blobs are shared by every repository, so a cross-repository mount is free.
        return Response(
            status_code=201,
            headers={"Location": f"/v2/{name}/blobs/{mount}", "Docker-Content-Digest": mount},
        )
    upload = svc.registry.storage.start_upload()
    if digest := query.get("digest"):  # monolithic: the whole blob in this request
        await _receive(request, svc, upload.id)
        svc.registry.storage.finish_upload(upload, digest)
        return Response(
            status_code=201,
            headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest},
        )
    return Response(status_code=202, headers=_upload_headers(name, upload.id, 0))


@route("PATCH", r"(?P<name>.+)/blobs/uploads/(?P<upload>[A-Za-z0-9-]+)")
async def patch_upload(request: Request, svc: Services, params: dict[str, str]) -> Response:
    size = await _receive(request, svc, params["upload"])
    return Response(
        status_code=202, headers=_upload_headers(params["name"], params["upload"], size)
    )


@route("PUT", r"(?P<name>.+)/blobs/uploads/(?P<upload>[A-Za-z0-9-]+)")
async def finish_upload(request: Request, svc: Services, params: dict[str, str]) -> Response:
    digest = request.query_params.get("digest")
    if not digest:
        raise DistributionError(400, "DIGEST_INVALID", "the digest query parameter is required")
    await _receive(request, svc, params["upload"])
    storage = svc.registry.storage
    storage.finish_upload(storage.upload(params["upload"]), digest)
    return Response(
        status_code=201,
        headers={
            "Location": f"/v2/{params['name']}/blobs/{digest}",
            "Docker-Content-Digest": digest,
        },
    )


@route("GET", r"(?P<name>.+)/blobs/uploads/(?P<upload>[A-Za-z0-9-]+)")
async def upload_status(request: Request, svc: Services, params: dict[str, str]) -> Response:
    upload = svc.registry.storage.upload(params["upload"])
    return Response(
        status_code=204, headers=_upload_headers(params["name"], upload.id, upload.size)
    )


@route("DELETE", r"(?P<name>.+)/blobs/uploads/(?P<upload>[A-Za-z0-9-]+)")
async def cancel_upload(request: Request, svc: Services, params: dict[str, str]) -> Response:
    storage = svc.registry.storage
    storage.cancel_upload(storage.upload(params["upload"]))
    return Response(status_code=204)


@route("PUT", r"(?P<name>.+)/manifests/(?P<reference>[^/]+)")
async def put_manifest(request: Request, svc: Services, params: dict[str, str]) -> Response:
    name, reference = params["name"], params["reference"]
    body = await _manifest_body(request)
    media_type = request.headers.get("content-type", "")
    digest = svc.registry.push_manifest(request.url.netloc, name, reference, body, media_type)
    return Response(
        status_code=201,
        headers={"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest},
    )


@route("GET", r"(?P<name>.+)/manifests/(?P<reference>[^/]+)")
async def get_manifest(request: Request, svc: Services, params: dict[str, str]) -> Response:
    storage = svc.registry.storage
    digest, media_type = storage.resolve(params["name"], params["reference"])
    body = storage.blobs.path(digest).read_bytes()
    headers = {"Docker-Content-Digest": digest, "Content-Length": str(len(body))}
    if request.method == "HEAD":
        return Response(headers=headers, media_type=media_type)
    return Response(body, headers=headers, media_type=media_type)


@route("DELETE", r"(?P<name>.+)/manifests/(?P<reference>[^/]+)")
async def delete_manifest(request: Request, svc: Services, params: dict[str, str]) -> Response:
    svc.registry.delete_manifest(params["name"], params["reference"])
    return Response(status_code=202)


@route("GET", r"(?P<name>.+)/tags/list")
async def list_tags(request: Request, svc: Services, params: dict[str, str]) -> Response:
    tags = svc.registry.storage.tags(params["name"])
    return JSONResponse({"name": params["name"], "tags": tags})
