"""The egress proxy: every TCP connection a mediated guest opens, redirected here by
nftables, is judged and then spliced, refused, or (for credentialed hosts) intercepted.

Per connection: the guest is known by its source address (`lookup`), the
destination it asked for by `SO_ORIGINAL_DST`. The first bytes are peeked (not
read): a TLS ClientHello gives the SNI, an HTTP/1.x request line the Host.
- refused: HTTP gets a 403 whose body says why; TLS gets the same 403 inside a
  TLS session with a leaf from the instance's CA (which the guest trusts); any
  other protocol gets a TCP reset.
- TLS to a host a credential names: intercepted. The upstream connection goes to
  the address the guest chose, with the SNI it sent, and must present a
  certificate valid for that name (the host's trust store plus
  `upstream_cafile`): a guest steering a credentialed name to another address
  cannot get the secret. Each request then gets the credential's header.
- plain HTTP to such a host: the header is set only when the destination is an
  address the name resolves to on the host, for the same reason.
- anything else: spliced unchanged to the original destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Literal

from ember.egress import http
from ember.egress.ca import CertificateAuthority
from ember.egress.credentials import Credential, headers_for
from ember.egress.flows import Flow, FlowLog
from ember.egress.policy import CompiledPolicy, Decision

log = logging.getLogger("ember.egress")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
TLS_HANDSHAKE = 0x16
_PEEK = 16 * 1024
_COPY = 64 * 1024


@dataclass
class Tenant:
    """What the proxy needs of one mediated instance."""

    instance_id: str
    policy: CompiledPolicy
    credentials: list[Credential]
    ca: CertificateAuthority
    flows: FlowLog

    def credentials_for(self, host: str | None) -> dict[str, str]:
        return headers_for(self.credentials, host) if host else {}

    def injected_names(self, host: str) -> list[str]:
        return [c.name for c in self.credentials if headers_for([c], host)]


Lookup = Callable[[str], Tenant | None]
# Where a redirected connection was going (SO_ORIGINAL_DST); tests without NAT pass their own.
Destination = Callable[[socket.socket], tuple[str, int]]


def parse_sni(data: bytes) -> str | None:
    """The server name of a TLS ClientHello in the first record of `data`, if any."""
    try:
        if data[0] != TLS_HANDSHAKE or data[5] != 1:
            return None
        end = min(len(data), 5 + int.from_bytes(data[3:5], "big"))
        pos = 5 + 4 + 2 + 32  # record header, handshake header, version, random
        pos += 1 + data[pos]  # session id
        pos += 2 + int.from_bytes(data[pos : pos + 2], "big")  # cipher suites
        pos += 1 + data[pos]  # compression methods
        ext_end = min(end, pos + 2 + int.from_bytes(data[pos : pos + 2], "big"))
        pos += 2
        while pos + 4 <= ext_end:
            kind = int.from_bytes(data[pos : pos + 2], "big")
            size = int.from_bytes(data[pos + 2 : pos + 4], "big")
            pos += 4
            if kind == 0:  # server_name: list length, type 0 (host_name), length, name
                if data[pos + 2] != 0:
                    return None
                length = int.from_bytes(data[pos + 3 : pos + 5], "big")
                return data[pos + 5 : pos + 5 + length].decode("ascii").lower().rstrip(".")
            pos += size
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def _hello_complete(data: bytes) -> bool:
    return len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], "big")


def original_destination(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack("!H", raw[2:4])[0]
    return str(ipaddress.IPv4Address(raw[4:8])), port


async def _readable(sock: socket.socket, timeout: float) -> None:
    """Wait until `sock` has something to read, at most `timeout` seconds."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():  # the reader may fire again before it is removed
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await asyncio.wait_for(ready, max(0.0, timeout))
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(sock.fileno())


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST: the program inside reads "connection reset by peer"."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(_COPY):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


async def _forward(
    head: http.RequestHead, reader: asyncio.StreamReader, up: asyncio.StreamWriter
) -> bool:
    """Send one request on; False when the connection stops being HTTP requests (an
    `Upgrade`, e.g. WebSocket: the rest is copied as it comes)."""
    up.write(head.encode())
    if head.get("upgrade"):
        await _pump(reader, up)
        return False
    await http.copy_body(head, reader, up)
    await up.drain()
    return True


def _end(writer: asyncio.StreamWriter) -> None:
    """Half-close where the transport can (TCP); TLS cannot, the server's close ends it."""
    if writer.can_write_eof():
        writer.write_eof()


async def _relay(
    sending: Coroutine[None, None, None],
    up_reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Requests one way (`sending`), answers back; when the server's side ends first
    (it closed after its answer), the connection is over."""
    send = asyncio.ensure_future(sending)
    receive = asyncio.ensure_future(_pump(up_reader, writer))
    try:
        done, _ = await asyncio.wait({send, receive}, return_when=asyncio.FIRST_COMPLETED)
        if send in done and send.exception() is None:
            await receive
    finally:
        for task in (send, receive):
            task.cancel()
        await asyncio.gather(send, receive, return_exceptions=True)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


@dataclass
class Connection:
    """One guest connection being judged."""

    tenant: Tenant
    sock: socket.socket
    destination: str
    port: int
    protocol: Literal["tls", "http", "tcp"] = "tcp"
    host: str | None = None
    refused: str = "the request could not be read"  # the reason of a refusal, for the 403

    def record(self, decision: Decision, credentials: list[str] | None = None) -> None:
        self.tenant.flows.append(
            Flow(time=datetime.datetime.now(datetime.UTC), protocol=self.protocol,
                 destination=self.destination, port=self.port, host=self.host,
                 action="allowed" if decision.allowed else "refused", reason=decision.reason,
                 credentials=credentials or [])
        )  # fmt: skip


class EgressProxy:
    """The host's one proxy for every mediated instance."""

    def __init__(
        self,
        lookup: Lookup,
        upstream: ssl.SSLContext,
        *,
        sniff_seconds: float = 0.3,
        connect_seconds: float = 10.0,
        destination: Destination | None = None,
    ) -> None:
        self.lookup = lookup
        self.destination = destination or original_destination
        self.upstream = upstream
        self.sniff_seconds = sniff_seconds
        self.connect_seconds = connect_seconds
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._listener is not None
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    async def start(self, host: str, port: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(512)
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept(listener), name="egress-proxy")

    async def close(self) -> None:
        tasks = [t for t in (self._accepting, *self._connections) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            task = asyncio.create_task(self._serve(sock))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            tenant = self.lookup(sock.getpeername()[0])
            destination, port = self.destination(sock)
            if tenant is None or (destination, port) == self.address:
                reset(sock)  # not a mediated guest, or a direct connection to the proxy
                return
            await self._judge(Connection(tenant, sock, destination, port))
        except (ConnectionError, ssl.SSLError, TimeoutError) as exc:
            log.debug("egress: connection ended: %s", exc)  # a guest gone, a handshake refused
            reset(sock)
        except Exception:
            log.exception("egress: connection failed")
            reset(sock)

    async def _judge(self, conn: Connection) -> None:
        first = await self._peek(conn.sock)
        if first[:1] == bytes([TLS_HANDSHAKE]):
            conn.protocol, conn.host = "tls", parse_sni(first)
            await self._tls(conn)
        elif http.looks_like_http(first):
            conn.protocol = "http"
            await self._http(conn)
        else:
            decision = conn.tenant.policy.decide(conn.destination, None)
            conn.record(decision)
            if not decision.allowed:
                reset(conn.sock)
                return
            await self._splice(conn)

    async def _peek(self, sock: socket.socket) -> bytes:
        """The first bytes the guest sent, left in the socket: a whole TLS record, an
        HTTP request line, or what came before the guest went quiet (server-first
        protocols send nothing: they wait `sniff_seconds` once)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.sniff_seconds
        data = b""
        while loop.time() < deadline:
            try:
                data = sock.recv(_PEEK, socket.MSG_PEEK)
            except BlockingIOError:
                data = b""
            else:
                if not data:  # closed before sending anything
                    return data
            if data and (
                (data[0] == TLS_HANDSHAKE and _hello_complete(data))
                or (data[0] != TLS_HANDSHAKE and (b"\n" in data or len(data) >= _PEEK))
            ):
                return data
            if data:
                await asyncio.sleep(0.002)  # more of a split ClientHello is on its way
                continue
            await _readable(sock, deadline - loop.time())
        return data

    async def _guest_streams(
        self, sock: socket.socket, tls: ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=http.MAX_HEAD)
        protocol = asyncio.StreamReaderProtocol(reader)
        timeout = self.connect_seconds if tls else None
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=tls, ssl_handshake_timeout=timeout
        )
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _upstream(
        self, conn: Connection, tls_name: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(
                conn.destination, conn.port, limit=http.MAX_HEAD,
                ssl=self.upstream if tls_name else None, server_hostname=tls_name,
            ),
            self.connect_seconds,
        )  # fmt: skip

    async def _splice(self, conn: Connection) -> None:
        try:
            up_reader, up_writer = await self._upstream(conn)
        except (OSError, TimeoutError):
            reset(conn.sock)
            return
        reader, writer = await self._guest_streams(conn.sock, None)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            await _close(up_writer)
            await _close(writer)

    async def _tls(self, conn: Connection) -> None:
        tenant, name = conn.tenant, conn.host
        decision = tenant.policy.decide(conn.destination, name)
        injecting = decision.allowed and name is not None and bool(tenant.credentials_for(name))
        if not decision.allowed or not injecting:
            conn.record(decision)
            if decision.allowed:
                await self._splice(conn)
            else:
                await self._refuse_inside_tls(conn, decision.reason)
            return
        assert name is not None
        reader, writer = await self._guest_streams(conn.sock, tenant.ca.server_context(name))
        try:
            try:
                up_reader, up_writer = await self._upstream(conn, tls_name=name)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                refused = Decision(False, f"upstream {name} ({conn.destination}): {exc}")
                conn.record(refused)
                await self._answer(reader, writer, http.refusal(refused.reason, status=502))
                return
            conn.record(decision, tenant.injected_names(name))
            try:
                await self._requests(conn, reader, up_writer, up_reader, writer, name)
            finally:
                await _close(up_writer)
        finally:
            await _close(writer)

    async def _refuse_inside_tls(self, conn: Connection, reason: str) -> None:
        context = conn.tenant.ca.server_context(conn.host or conn.destination)
        try:
            reader, writer = await self._guest_streams(conn.sock, context)
        except (OSError, ssl.SSLError, TimeoutError):
            return  # the guest did not trust the CA; it saw a failed handshake
        try:
            await self._answer(reader, writer, http.refusal(reason))
        finally:
            await _close(writer)

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes
    ) -> None:
        """Read the request head (so closing does not reset away the answer), answer."""
        with contextlib.suppress(http.BadRequest, OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(http.read_head(reader), self.connect_seconds)
        with contextlib.suppress(OSError):
            writer.write(answer)
            await writer.drain()

    async def _requests(
        self,
        conn: Connection,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls_name: str,
    ) -> None:
        """Intercepted TLS: each request gets the credential headers of the verified name;
        answers are copied back unchanged."""

        async def send() -> None:
            while (head := await http.read_head(reader)) is not None:
                for header, value in conn.tenant.credentials_for(tls_name).items():
                    head.set(header, value)
                if not await _forward(head, reader, up_writer):
                    return
            _end(up_writer)

        await _relay(send(), up_reader, writer)

    async def _http(self, conn: Connection) -> None:
        """Plain HTTP: judged by its Host; each later request on the connection too (one
        refused ends the connection, after what was answered)."""
        reader, writer = await self._guest_streams(conn.sock, None)
        up: asyncio.StreamWriter | None = None
        try:
            head = await http.read_head(reader)
            if head is None or not await self._admit(conn, head):
                writer.write(http.refusal(conn.refused))
                return
            try:
                up_reader, up = await self._upstream(conn)
            except (OSError, TimeoutError) as exc:
                writer.write(http.refusal(f"upstream {conn.destination}: {exc}", status=502))
                return
            upstream = up

            async def send(head: http.RequestHead | None) -> None:
                while head is not None and await self._admit(conn, head):
                    if not await _forward(head, reader, upstream):
                        return
                    head = await http.read_head(reader)
                _end(upstream)

            await _relay(send(head), up_reader, writer)
        except (http.BadRequest, ConnectionError, OSError) as exc:
            log.debug("egress: http connection ended: %s", exc)
        finally:
            if up is not None:
                await _close(up)
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            await _close(writer)

    async def _admit(self, conn: Connection, head: http.RequestHead) -> bool:
        """Judge one plain HTTP request by its Host (recorded); set its credentials."""
        conn.host = head.host
        decision = conn.tenant.policy.decide(conn.destination, conn.host)
        if not decision.allowed:
            conn.record(decision)
            conn.refused = decision.reason
            return False
        conn.record(decision, await self._inject_plain(conn, head))
        return True

    async def _inject_plain(self, conn: Connection, head: http.RequestHead) -> list[str]:
        """Set the credential headers of a plain HTTP request, only when the destination
        is an address the Host name resolves to here; the names of those set."""
        host = conn.host
        headers = conn.tenant.credentials_for(host)
        if not host or not headers:
            return []
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            return []
        if conn.destination not in {str(info[4][0]) for info in infos}:
            return []
        for header, value in headers.items():
            head.set(header, value)
        return conn.tenant.injected_names(host)
