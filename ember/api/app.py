"""The HTTP application: routers, auth, error mapping, request ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from ember import __version__
from ember.api.deps import require_auth
from ember.api.errors import install_error_handlers
from ember.api.middleware import RequestIdMiddleware
from ember.api.routes import (
    guest_access,
    health,
    images,
    ingresses,
    instances,
    registry,
    volumes,
)
from ember.api.services import Services
from ember.config import Settings

# Routers that need a valid bearer token, one per resource.
PROTECTED_ROUTERS: list[APIRouter] = [
    images.router,
    instances.router,
    guest_access.router,
    volumes.router,
    ingresses.router,  # with GET /ingresses/ca.pem, the TLS root (token needed)
]


def create_app(settings: Settings | None = None) -> FastAPI:
    services = Services.build(settings or Settings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

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
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    app.include_router(registry.router)  # checks tokens itself, as registry clients expect
    app.include_router(guest_access.sockets)  # WebSockets check tokens before the upgrade
    for router in PROTECTED_ROUTERS:
        app.include_router(router, dependencies=[Depends(require_auth)])
    return app
