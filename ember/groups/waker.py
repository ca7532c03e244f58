"""The waker endpoint: a tiny HTTP/1.1 server on a Unix socket that only Caddy calls.

Caddy asks `GET /wake/<group id>/<port>` (no body: Caddy keeps the original request)
for each request it could not place itself. `place(group_id, port)` decides, waking
an instance first if need be (the request is held meanwhile), and returns the
upstream address, or raises an `EmberError` whose status and message go back to the
client. One request per connection: it is the slow path, so simplicity wins.

Rejected: a route on Ember's API (the bearer token would sit in Caddy's config and
every wake would cross the auth middleware), uvicorn for this socket (a second ASGI
server in the process for one GET).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from ember.errors import EmberError
from ember.groups.routes import UPSTREAM_HEADER

log = logging.getLogger("ember.groups")
Place = Callable[[str, int], Awaitable[str]]
HEAD_LIMIT = 64 * 1024
READ_TIMEOUT = 10.0


class Waker:
    def __init__(self, socket_path: Path, place: Place) -> None:
        self.socket_path, self._place = socket_path, place
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.socket_path), limit=HEAD_LIMIT
        )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        self.socket_path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(await self._answer(head.split(b"\r\n", 1)[0].decode("latin-1")))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, request_line: str) -> bytes:
        parts = request_line.split(" ")
        # Caddy's rewrite keeps the original query string: only the path counts.
        path = parts[1].partition("?")[0] if len(parts) == 3 else ""
        segments = path.split("/")
        if len(segments) != 4 or segments[1] != "wake" or not segments[3].isdigit():
            return _response(404, "ember groups: unknown waker path")
        try:
            address = await self._place(segments[2], int(segments[3]))
        except EmberError as exc:
            return _response(exc.status if exc.status >= 500 else 503, exc.message)
        except Exception as exc:
            log.exception("waker failed")
            return _response(503, f"ember groups: wake failed: {exc}")
        return (
            f"HTTP/1.1 204 No Content\r\n{UPSTREAM_HEADER}: {address}\r\nConnection: close\r\n\r\n"
        ).encode()


def _response(status: int, message: str) -> bytes:
    body = f"ember service group: {message}\n".encode()
    return (
        f"HTTP/1.1 {status} {'Service Unavailable' if status == 503 else 'Error'}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


__all__ = ["Waker"]
