"""Request ids, access logging and the request body limit, as plain ASGI middleware.

Every answer says how long the server took to start it (`Server-Timing: app;dur=<ms>`,
W3C): a client or a cluster gateway in front can tell the server's time from the
network's (`bench/gateway.py` compares direct and gateway creates by it).

Plain ASGI (not Starlette's BaseHTTPMiddleware) so streaming responses (SSE
logs, registry blobs) and WebSockets pass through untouched.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("ember.access")
REQUEST_ID_HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"")
        request_id = incoming if _VALID_ID.match(incoming) else secrets.token_hex(8).encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                took = f"app;dur={(time.perf_counter() - started) * 1000:.2f}".encode()
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, request_id),
                    (b"server-timing", took),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %s",
                scope.get("method", "WS"),
                scope["path"],
                status,
                extra={
                    "request_id": request_id.decode(),
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes the limit; FastAPI lets HTTPExceptions
    out of body parsing as they are, and the error handlers shape the 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes with 413, before they fill memory.

    A declared `Content-Length` over the limit is refused before the app runs; a
    chunked body is counted as it is read and stops at the limit. Paths under
    `exempt` (routes that stream large bodies to disk themselves) and WebSockets
    are not limited.
    """

    def __init__(self, app: ASGIApp, *, limit: int, exempt: tuple[str, ...] = ()) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            # Read outside FastAPI's body parsing (a route streaming the body itself).
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Imported here: errors.py imports FastAPI's app machinery, this module does not.
        from ember.api.errors import error_response

        message = str(BodyTooLarge(self.limit).detail)
        response = error_response(413, "payload_too_large", message)
        response.headers["Connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)
