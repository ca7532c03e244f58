"""One item operation, two routes: the batch (`PUT /v1/<kind>/start`, a JSON list of
items naming their target) and the plumbing layer's by-uuid twin (`PUT
/v1/<kind>/{uuid}/start`, one optional object), so each operation is written once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ember.api.deps import ServicesDep
from ember.api.services import Services
from ember.ukc import requests as req
from ember.ukc.envelope import Timer, each, envelope

JSON = dict[str, Any]
Act = Callable[[Services, JSON], Awaitable[JSON]]


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
