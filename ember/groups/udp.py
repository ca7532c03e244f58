"""UDP for the L4 path (`l4.py`): a datagram endpoint per service; the datagrams of
one client address are a flow, placed once (a wake holds its first datagrams, up to
`HELD` of them) and then relayed through a socket of its own connected to the placed
instance, so the instance's answers go back to that client.

UDP has no end: a flow ends when no datagram has gone either way for the idle time
(30 s, as conntrack's timeout for a UDP flow that is not a stream); until then it
counts as one connection of its instance (load, activity). A refused flow drops what
it held; the client's next datagram asks again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from ember.errors import EmberError

if TYPE_CHECKING:
    from ember.groups.l4 import Flow, Spawn, Stop

log = logging.getLogger("ember.groups.udp")
IDLE_SECONDS = 30.0
HELD = 64  # datagrams a flow keeps while it is placed; more are dropped, as a full queue

Address = tuple[str, int]


async def listen(host: str, port: int, flow: Flow, spawn: Spawn, idle_seconds: float) -> Stop:
    front = _Front(port, flow, spawn, idle_seconds)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: front, local_addr=(host, port))

    async def stop() -> None:
        transport.close()

    return stop


class _Front(asyncio.DatagramProtocol):
    """The service's endpoint: one `_Flow` per client address."""

    def __init__(self, port: int, flow: Flow, spawn: Spawn, idle_seconds: float) -> None:
        self.port, self.flow, self.spawn, self.idle = port, flow, spawn, idle_seconds
        self.flows: dict[Address, _Flow] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not its subclass

    def datagram_received(self, data: bytes, addr: Address) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            flow = self.flows[addr] = _Flow(self, addr)
            self.spawn(flow.run())
        flow.send(data)

    def connection_lost(self, exc: Exception | None) -> None:
        for flow in self.flows.values():
            flow.ended.set()

    def answer(self, data: bytes, client: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, client)


class _Flow(asyncio.DatagramProtocol):
    """One client's datagrams to its placed instance, and the instance's answers back."""

    def __init__(self, front: _Front, client: Address) -> None:
        self.front, self.client = front, client
        self.held: list[bytes] = []
        self.upstream: asyncio.DatagramTransport | None = None
        self.last = time.monotonic()
        self.ended = asyncio.Event()

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.upstream is not None:
            self.upstream.sendto(data)
        elif len(self.held) < HELD:
            self.held.append(data)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.last = time.monotonic()
        self.front.answer(data, self.client)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        log.debug("udp %s: %s -> instance: %s", self.front.port, self.client, exc)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self.front.flow() as address:
                ip, _, port = address.rpartition(":")
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: self, remote_addr=(ip, int(port))
                )
                self.upstream = transport
                try:
                    for data in self.held:
                        transport.sendto(data)
                    self.held.clear()
                    await self._until_idle()
                finally:
                    transport.close()
        except EmberError as exc:  # refused, or a wake failed: drop what was held
            log.info("udp %s: flow from %s refused: %s", self.front.port, self.client, exc.message)
        except OSError as exc:
            log.warning("udp %s: flow from %s failed: %s", self.front.port, self.client, exc)
        finally:
            self.front.flows.pop(self.client, None)

    async def _until_idle(self) -> None:
        while (left := self.last + self.front.idle - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(self.ended.wait(), left)
                return  # the service's endpoint closed
            except TimeoutError:
                continue


__all__ = ["IDLE_SECONDS", "listen"]
