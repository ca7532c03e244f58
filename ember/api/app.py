"""The HTTP application: routers, auth, error mapping, request ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from ember import __version__
from ember.api.deps import require_auth
from ember.api.errors import document_errors, error_response_doc, install_error_handlers
from ember.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from ember.api.routes import (
    builds,
    devices,
    egress,
    groups,
    guest_access,
    health,
    host,
    images,
    ingresses,
    instances,
    memory,
    pushes,
    registry,
    snapshots,
    templates,
    volumes,
)
from ember.api.services import Services
from ember.config import Settings
from ember.server import build
from ember.ukc import ROUTERS as UKC_ROUTERS

# Routers that need a valid bearer token, one per resource.
PROTECTED_ROUTERS: list[APIRouter] = [
    images.router,
    pushes.router,  # /pushes: images to other registries
    instances.router,
    guest_access.router,
    volumes.router,
    ingresses.router,  # with GET /ingresses/ca.pem, the TLS root (token needed)
    host.router,  # /resources, /capabilities
    devices.router,
    memory.router,  # /resources/memory/reclaim
    snapshots.router,
    snapshots.instance_router,  # /instances/{id}/snapshots, /fork, /snapshot-schedule
    egress.router,  # /instances/{id}/egress, /egress/flows (Ember extension)
    groups.router,  # /service-groups (Ember extension)
    *UKC_ROUTERS,  # /v1: the Unikraft Cloud API (ember/ukc)
    templates.router,  # /templates (Ember extension)
    builds.router,  # /builds
    builds.builders_router,  # /builders
]
# Paths whose routes stream large request bodies to disk themselves: no overall limit.
UNLIMITED_BODY_PATHS = ("/v2/", "/volumes/from-archive", "/builds")
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A token minted by `ember token` (HS256 JWT)",
    },
    "registryBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "`/v2/` only: any user name, an Ember token as the password",
    },
}


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """The app over `services` (default: `ember.server.build(settings)`); its lifespan
    starts and stops them."""
    services = services or build(settings or Settings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with services.running():
            yield

    app = FastAPI(
        title="Ember API",
        version=__version__,
        description=(
            "Run OCI images as QEMU microVMs. Compatible with the Hypeman API.\n\n"
            "WebSocket endpoints (not listed as paths): `GET /instances/{id}/exec` and "
            "`GET /instances/{id}/cp`, speaking the protocols of the official client's "
            "`hypeman.lib.exec` and `hypeman.lib.cp`. `/v2/` is an OCI distribution registry."
        ),
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    # Added last runs first: request ids (and the access log) cover the limit's 413s too.
    app.add_middleware(
        BodyLimitMiddleware,
        limit=services.settings.max_body_bytes,
        exempt=UNLIMITED_BODY_PATHS,
    )
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    app.include_router(registry.router)  # checks tokens itself, as registry clients expect
    app.include_router(guest_access.sockets)  # WebSockets check tokens before the upgrade
    for router in PROTECTED_ROUTERS:
        app.include_router(router, dependencies=[Depends(require_auth)])
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, corrected: the real error answers (see `document_errors`),
    the bearer scheme on every route behind the token (with its 401), and the 413 of
    the body limit on every route that takes a body."""
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        spec.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
        for path, method in _protected_operations():
            operation = spec["paths"].get(path, {}).get(method)
            if operation is None:
                continue
            operation["security"] = [{"bearerAuth": []}]
            operation["responses"].setdefault("401", error_response_doc(401))
        for path, item in spec["paths"].items():
            for operation in item.values():
                if "requestBody" in operation and not path.startswith(UNLIMITED_BODY_PATHS):
                    operation["responses"].setdefault("413", error_response_doc(413))
        app.openapi_schema = document_errors(spec)
    return app.openapi_schema


def _protected_operations() -> list[tuple[str, str]]:
    return [
        (route.path_format, method.lower())
        for router in PROTECTED_ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods or ()
    ]
