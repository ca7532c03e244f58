"""The `/v1` envelope and its per-item errors (the SDK's `core/response.py` reads them).

Every answer is HTTP 200 with `{status, message?, data: {<key>: [...]}, errors?,
op_time_us}`; an item that failed is `{"status": "error", "error": <code>, "message",
uuid?/name?}` in the same list, and the envelope says `partial_success` or `error`.
A missing item must not be an HTTP 404: to the SDK that means "no such route".
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi.responses import JSONResponse

from ember.errors import Conflict, EmberError, NotFound

JSON = dict[str, Any]

# The API's own item codes the SDK knows (`NOT_FOUND_CODE`, `ALREADY_EXISTS_CODE`).
NOT_FOUND = 8
ALREADY_EXISTS = 23


class Timer:
    """`op_time_us`: from the request's arrival to its answer."""

    def __init__(self) -> None:
        self.began = time.perf_counter_ns()

    def micros(self) -> int:
        return (time.perf_counter_ns() - self.began) // 1000


def item_error(exc: EmberError, ref: JSON | None = None) -> JSON:
    """A failed item: the seed's code where it has one (8 missing, 23 taken), and
    Ember's own word (`code`) beside the message either way."""
    item: JSON = {"status": "error", "message": exc.message, "code": exc.code}
    if isinstance(exc, NotFound):
        item["error"] = NOT_FOUND
    elif isinstance(exc, Conflict) and exc.code == "already_exists":
        item["error"] = ALREADY_EXISTS
    return {**item, **(ref or {})}


def ok(item: JSON) -> JSON:
    return {"status": "success", **item}


def envelope(
    key: str, items: Sequence[JSON], timer: Timer, message: str | None = None
) -> JSONResponse:
    """The answer for `items` under `data[key]`; its status follows the items'."""
    failed = sum(1 for item in items if item.get("status") == "error")
    status = (
        "error" if failed and failed == len(items) else "partial_success" if failed else "success"
    )
    body: JSON = {"status": status, "data": {key: list(items)}, "op_time_us": timer.micros()}
    if message is not None:
        body["message"] = message
    elif failed:
        body["message"] = f"{failed} of {len(items)} items failed"
    return JSONResponse(body)


def failure(message: str, timer: Timer, key: str, items: Sequence[JSON] = ()) -> JSONResponse:
    """A request-level `error` envelope (e.g. a wait that timed out) that still lists items."""
    body: JSON = {"status": "error", "message": message, "data": {key: list(items)},
                  "op_time_us": timer.micros()}  # fmt: skip
    return JSONResponse(body)


async def each(refs: Sequence[JSON], act: Callable[[JSON], Awaitable[JSON]]) -> list[JSON]:
    """Run `act` per item in order; an Ember error becomes that item's error entry, the
    others go on (a batch is never all-or-nothing)."""
    out = []
    for ref in refs:
        try:
            out.append(ok(await act(ref)))
        except EmberError as exc:
            out.append(item_error(exc, named(ref)))
    return out


def named(ref: JSON) -> JSON:
    """The `uuid`/`name` a request item gave, echoed in its answer."""
    return {k: ref[k] for k in ("uuid", "name") if isinstance(ref.get(k), str)}
