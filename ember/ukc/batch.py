"""One item operation, two routes: the batch (`PUT /v1/<kind>/start`, a JSON list of
items naming their target) and the plumbing layer's by-uuid twin (`PUT
/v1/<kind>/{uuid}/start`, one optional object), so each operation is written once; and
the by-uuid read (`GET /v1/<kind>/{uuid}`), the same for every kind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ember.api.deps import ServicesDep
from ember.api.services import Services
from ember.errors import EmberError
from ember.ukc import requests as req
from ember.ukc.envelope import Timer, each, envelope, item_error, ok

JSON = dict[str, Any]
Act = Callable[[Services, JSON], Awaitable[JSON]]
Read = Callable[[Services, JSON], JSON]  # the item a reference names, as the SDK reads it


def item_routes(
    router: APIRouter, key: str, method: str, path: str, act: Act, summary: str
) -> None:
    """Serve `act` on `path` (a batch) and on `/{uuid}{path}` (one item)."""

    async def batch(request: Request, svc: ServicesDep) -> JSONResponse:
        timer, items = Timer(), await req.body_items(request)
        return envelope(key, await each(items, lambda item: act(svc, item)), timer)

    async def one(uuid: str, request: Request, svc: ServicesDep) -> JSONResponse:
        timer, body = Timer(), await req.optional_object(request)
        item = {**body, "uuid": uuid}
        item.pop("name", None)
        return envelope(key, await each([item], lambda given: act(svc, given)), timer)

    router.add_api_route(path, batch, methods=[method], summary=summary)
    router.add_api_route(f"/{{uuid}}{path}", one, methods=[method], summary=f"{summary} (one)")


def get_route(router: APIRouter, key: str, read: Read, summary: str) -> None:
    """Serve `GET /{uuid}`: the one item, or its item error (HTTP 200, as the SDK expects)."""

    async def get_one(uuid: str, svc: ServicesDep) -> JSONResponse:
        timer = Timer()
        try:
            item = ok(read(svc, {"uuid": uuid}))
        except EmberError as exc:
            item = item_error(exc, {"uuid": uuid})
        return envelope(key, [item], timer)

    router.add_api_route("/{uuid}", get_one, methods=["GET"], summary=summary, name=f"get_{key}")
