"""Reading the SDK's requests: JSON bodies (GET included: `wait` and `log` carry theirs in
the body) and the listing filters, refusing what Ember does not do by name."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fastapi import Request

from ember.errors import InvalidArgument

JSON = dict[str, Any]
NOT_YET = "not supported by this Ember yet"


async def body_object(request: Request) -> JSON:
    value = await _body(request)
    if not isinstance(value, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return value


async def optional_object(request: Request) -> JSON:
    """The body of a by-uuid route: an object, or nothing."""
    return await body_object(request) if await request.body() else {}


async def body_items(request: Request) -> list[JSON]:
    """A batch: a list of objects (one object is taken as a batch of one)."""
    value = await _body(request)
    value = [value] if isinstance(value, dict) else value
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidArgument("the request body must be a JSON list of objects")
    return value


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise InvalidArgument("a JSON request body is required")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"the request body is not JSON: {exc}") from exc


def unsupported(item: JSON, fields: Iterable[str], what: str) -> None:
    """Refuse, by name, any of `fields` given with a value that asks for something (a
    default value such as false, 0 or [] asks for nothing and passes)."""
    asked = [f for f in fields if item.get(f) not in (None, False, 0, [], {}, "")]
    if asked:
        raise InvalidArgument(
            f"{what}: {', '.join(sorted(asked))} {'is' if len(asked) == 1 else 'are'} "
            "not supported by Ember",
            code="not_supported",
        )


def filters(request: Request) -> list[JSON]:
    """The repeated `uuid` and `name` query parameters as references, in order."""
    params = request.query_params
    return [{"uuid": u} for u in params.getlist("uuid")] + [
        {"name": n} for n in params.getlist("name")
    ]


def tag_list(request: Request) -> list[str]:
    """`tags=a,b`: one parameter, comma separated (repeats add more)."""
    return [t for value in request.query_params.getlist("tags") for t in value.split(",") if t]


def flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidArgument(f"{name}: true or false, got {value!r}")
    return value in ("true", "1")


def count(request: Request) -> int | None:
    value = request.query_params.get("count")
    if value is None:
        return None
    if not value.isdigit() or int(value) == 0:
        raise InvalidArgument(f"count: a positive integer, got {value!r}")
    return int(value)
