"""The registry as builder VMs see it: a TCP relay on the network's gateway address.

The server listens on loopback (`EMBER_LISTEN`), which a guest cannot reach; the relay
listens on `<gateway>:<port>` and pipes each connection to the server. Builder VMs pull
their base images and push their results through it with a short-lived token, as any
registry client would. Rejected: making the server itself listen on the gateway (every
guest would reach the whole API, not only what a token allows through a relay that is
up while the server runs).
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["Relay"]

BUFFER = 256 * 1024


class Relay:
    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.listen, self.upstream = listen, upstream
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        """`host:port` as guests reach it."""
        return f"{self.listen[0]}:{self.listen[1]}"

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, *self.listen, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    with contextlib.suppress(OSError, ConnectionError):
        writer.close()
