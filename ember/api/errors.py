"""Map every failure to Hypeman's error body `{"code", "message", "details"?}`.

Bad input is always a 400 naming the field (pydantic's 422 is folded into
400: Hypeman's clients treat 422 as unexpected), and nothing leaks a stack
trace: unexpected errors answer 500 with the request id to look up in the log.

The same shape is documented in `/openapi.json`: routes list their error
statuses with `error_responses(...)`, and `document_errors` rewrites the 422
FastAPI documents for every route with a body or parameters into that 400.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match

from ember.errors import EmberError

log = logging.getLogger("ember.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}

# What each status means in Ember's answers, for the OpenAPI document.
_DESCRIPTIONS = {
    400: "Bad request: a field is invalid (the message names it)",
    401: "Missing, invalid or expired bearer token",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict with the resource's current state",
    413: "Request body too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    429: "Too many requests",
    500: "Internal error (the message carries the request id)",
    503: "Temporarily unavailable",
}
ERROR_SCHEMA = "Error"


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable code of this problem", examples=["invalid"])
    message: str = Field(description="What is wrong, naming the field")


class Error(BaseModel):
    """Every error answer's body (Hypeman's `Error`)."""

    code: str = Field(description="Machine-readable error code", examples=["bad_request"])
    message: str = Field(description="Human-readable description, naming the field")
    details: list[ErrorDetail] | None = Field(
        default=None, description="One entry per problem when a request has several"
    )


def error_responses(*statuses: int, model: type[BaseModel] = Error) -> dict[int | str, Any]:
    """`responses=` for a route decorator: each status with the error body it carries.

    401 and 413 need not be listed: the OpenAPI generation adds them to routes behind
    the token and to routes with a body."""
    return {
        status: {"model": model, "description": _DESCRIPTIONS.get(status, "Error")}
        for status in statuses
    }


def _error_content() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}}


def error_response_doc(status: int) -> dict[str, Any]:
    """One documented error answer in raw OpenAPI form (for generated documents)."""
    return {"description": _DESCRIPTIONS.get(status, "Error"), "content": _error_content()}


def document_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """Make a generated OpenAPI document tell the truth about errors: FastAPI's 422
    (never sent: validation errors are folded into 400) becomes the 400 with `Error`,
    and the schemas only that 422 used are dropped."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(ERROR_SCHEMA, _component(Error))
    schemas.setdefault("ErrorDetail", _component(ErrorDetail))
    for operation in _operations(spec):
        responses = operation.setdefault("responses", {})
        if responses.pop("422", None) is not None:
            responses.setdefault("400", error_response_doc(400))
    for name in ("HTTPValidationError", "ValidationError"):  # the user before the used
        others = {key: value for key, value in schemas.items() if key != name}
        if f'"#/components/schemas/{name}"' not in json.dumps([spec["paths"], others]):
            schemas.pop(name, None)
    return spec


def _component(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # each nested model is its own component
    return schema


def _operations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return [
        operation
        for item in spec.get("paths", {}).values()
        for method, operation in item.items()
        if method in methods
    ]


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, headers=headers)


# The built-in registry's paths: errors there take the distribution spec's body.
REGISTRY_PREFIX = "/v2"


def oci_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The OCI distribution spec's error body (`{"errors": [...]}`), which registry
    clients such as skopeo and docker read."""
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="ember"'
    body = {"errors": [{"code": code, "message": message}]}
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    # Drop the location kind ("body", "query", "path") and pydantic's union branch names.
    parts = [str(p) for p in loc[1:] if not str(p).startswith("function-")] or [str(loc[0])]
    return ".".join(parts)


def _validation_message(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {
            "code": str(err.get("type", "invalid")),
            "message": f"{_field(err['loc'])}: {_validation_message(err)}",
        }
        for err in exc.errors()
    ]
    message = details[0]["message"] if details else "invalid request"
    if len(details) > 1:
        message += f" (and {len(details) - 1} more)"
    return error_response(400, "bad_request", message, details)


async def _on_ember_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EmberError)
    return error_response(exc.status, exc.code, exc.message)


# OCI codes for what the router itself answers under `/v2` (no such path, wrong method).
_OCI_CODES = {404: "NAME_UNKNOWN", 405: "UNSUPPORTED"}


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    """The router's own answers (404, 405 with its `Allow` header), in the body the
    path's clients read."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # Starlette names the methods of one route; list them all
        headers["Allow"] = ", ".join(_allowed_methods(request)) or headers.get("Allow", "")
    path = request.url.path
    if path == REGISTRY_PREFIX or path.startswith(REGISTRY_PREFIX + "/"):
        code = _OCI_CODES.get(exc.status_code, "UNSUPPORTED")
        return oci_error(exc.status_code, code, str(exc.detail), headers)
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on this path (asked of each route, as the router
    asks: included routers hide their routes' own method sets)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
               for route in routes)
    ]  # fmt: skip


async def _on_client_gone(request: Request, _: Exception) -> Response:
    """A client that hangs up mid-body (an upload given up) is not a server error: one
    info line, and what was half-received is undone by the route's own cleanup."""
    request_id = getattr(request.state, "request_id", "-")
    log.info("client hung up before the request body ended: %s %s", request.method,
             request.url.path, extra={"request_id": request_id})  # fmt: skip
    return Response(status_code=400)  # nobody reads it


# uvicorn (0.54, its websockets-sansio protocol) logs "ASGI callable returned without
# completing handshake." at ERROR after every handshake the app refused with an HTTP answer
# (`send_denial_response`), as if the app had failed. The refusal marks its task's context;
# the filter turns that line into the info it is. Other such lines stay errors.
_refused_handshake: ContextVar[bool] = ContextVar("ember_refused_handshake", default=False)
_UVICORN_NO_HANDSHAKE = "ASGI callable returned without completing handshake."


async def refuse_websocket(websocket: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse the upgrade with a plain HTTP error in Ember's error shape."""
    _refused_handshake.set(True)
    await websocket.send_denial_response(error_response(status, code, message))


class _RefusedHandshakeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _refused_handshake.get() and record.msg == _UVICORN_NO_HANDSHAKE:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "WebSocket upgrade refused with an HTTP error answer", ()
        return True


def _quiet_refused_handshakes() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _RefusedHandshakeFilter) for f in logger.filters):
        logger.addFilter(_RefusedHandshakeFilter())


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "-")
    log.exception("unhandled error", extra={"request_id": request_id})
    return error_response(500, "internal_error", f"internal error (request id {request_id})")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(EmberError, _on_ember_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(ClientDisconnect, _on_client_gone)
    app.add_exception_handler(Exception, _on_unexpected)
    _quiet_refused_handshakes()
