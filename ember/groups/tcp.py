"""TCP for the L4 path (`l4.py`): a listener per service, TLS ended here for a
service with the `tls` handler alone (the certificate Caddy keeps for the group's
domain, picked by SNI: `ember/ingress/termination.py`), each connection placed and
counted as a flow, then its bytes relayed both ways.

The relay is two `asyncio.Protocol`s handing each chunk the loop read straight to the
other transport (twice the throughput of `StreamReader`/`StreamWriter` copies,
measured in bench/tcp.py), with the transports' flow control both ways.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from ember.errors import EmberError

if TYPE_CHECKING:
    from ember.groups.l4 import Flow, Spawn, Stop

log = logging.getLogger("ember.groups.tcp")
BUFFER = 256 * 1024  # a transport's send buffer holds 4x this before its peer pauses
DIAL_SECONDS = 5.0  # connecting to the placed instance (awake and listening by then)


async def listen(
    host: str, port: int, tls: ssl.SSLContext | None, flow: Flow, spawn: Spawn
) -> Stop:
    def accepted() -> _Side:
        side = _Side()
        spawn(_serve(port, flow, side))
        return side

    server = await asyncio.get_running_loop().create_server(accepted, host, port, ssl=tls)

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return stop


async def _serve(port: int, flow: Flow, client: _Side) -> None:
    transport = await client.made
    try:
        async with flow() as address:
            await _relay(address, client)
    except EmberError as exc:  # refused (hard limit, nothing to serve) or a wake failed
        log.info("tcp %s: connection refused: %s", port, exc.message)
        transport.close()


async def _relay(address: str, client: _Side) -> None:
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


__all__ = ["listen"]
