"""Map every failure to Hypeman's error body `{"code", "message", "details"?}`.

Bad input is always a 400 naming the field (pydantic's 422 is folded into
400: Hypeman's clients treat 422 as unexpected), and nothing leaks a stack
trace: unexpected errors answer 500 with the request id to look up in the log.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

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


def error_response(
    status: int, code: str, message: str, details: list[dict[str, str]] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
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


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "-")
    log.exception("unhandled error", extra={"request_id": request_id})
    return error_response(500, "internal_error", f"internal error (request id {request_id})")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(EmberError, _on_ember_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
