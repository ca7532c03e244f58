"""A small DNS responder: instance names from the leases, everything else forwarded.

Guests use it as their resolver (it listens on the gateway address); ingress
(Caddy) asks it on a loopback port for instance addresses per request. Answers:

- ``<instance>.<domain>`` A: the lease's address (TTL 5 s: an address can move
  after a restore); other types of a known name: no data (NOERROR, empty);
- an unknown name in the domain: NXDOMAIN (authoritative), never forwarded;
- PTR for an address of the subnet: the instance's name, else NXDOMAIN;
- anything else: relayed unchanged to the host's resolvers, first answer wins;
  SERVFAIL when none answers.

UDP and TCP (RFC 7766 framing), as a client retries over TCP when a relayed
answer comes back truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

log = logging.getLogger(__name__)

TYPE_A, TYPE_PTR, TYPE_AAAA, TYPE_ANY = 1, 12, 28, 255
CLASS_IN = 1
RCODE_OK, RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP = 0, 1, 2, 3, 4
TTL = 5
UPSTREAM_TIMEOUT = 2.0
_HEADER = struct.Struct("!HHHHHH")
_MAX_UDP = 65535

Address = tuple[str, int]


class MalformedQuery(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Question:
    qid: int
    flags: int
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int
    raw: bytes  # the question section as received (echoed in answers)


def parse_query(packet: bytes) -> Question:
    """The first question of a query; MalformedQuery if it is not one."""
    if len(packet) < _HEADER.size:
        raise MalformedQuery("short header")
    qid, flags, qdcount, _, _, _ = _HEADER.unpack_from(packet)
    if flags & 0x8000 or qdcount != 1:
        raise MalformedQuery("not a single-question query")
    labels, offset = [], _HEADER.size
    while True:
        if offset >= len(packet):
            raise MalformedQuery("name runs past the packet")
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length > 63:  # a compression pointer has no place in a question
            raise MalformedQuery("bad label")
        labels.append(packet[offset : offset + length].decode("ascii", "replace").lower())
        offset += length
    if offset + 4 > len(packet):
        raise MalformedQuery("question truncated")
    qtype, qclass = struct.unpack_from("!HH", packet, offset)
    raw = packet[_HEADER.size : offset + 4]
    return Question(qid, flags, ".".join(labels), qtype, qclass, raw)


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        data = label.encode("ascii")
        out += bytes([len(data)]) + data
    return out + b"\0"


def build_answer(
    q: Question, rcode: int, records: Sequence[tuple[int, bytes]] = (), *, authoritative: bool
) -> bytes:
    """A response echoing the question; ``records`` are (type, rdata) for the asked name."""
    flags = 0x8000 | (q.flags & 0x7900) | 0x0080 | rcode  # QR, opcode+RD kept, RA
    if authoritative:
        flags |= 0x0400
    out = _HEADER.pack(q.qid, flags, 1, len(records), 0, 0) + q.raw
    for rtype, rdata in records:
        # 0xc00c: a pointer to the question's name, right after the header.
        out += struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, TTL, len(rdata)) + rdata
    return out


def error_for(packet: bytes, rcode: int) -> bytes | None:
    """A bare error response to an unparsable query (None if not even its id is there)."""
    if len(packet) < 4:
        return None
    qid, flags = struct.unpack_from("!HH", packet)
    return _HEADER.pack(qid, 0x8000 | (flags & 0x7900) | 0x0080 | rcode, 0, 0, 0, 0)


def resolv_conf_upstreams(path: Path = Path("/etc/resolv.conf")) -> list[Address]:
    """The IPv4 nameservers of resolv.conf, port 53."""
    servers: list[Address] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    servers.append((str(ipaddress.IPv4Address(parts[1])), 53))
    return servers


class DnsResolver:
    """The answering logic, transport-free: ``await answer(query_bytes)``."""

    def __init__(
        self,
        domain: str,
        lookup: Callable[[str], str | None],
        upstreams: Sequence[Address],
        *,
        subnet: ipaddress.IPv4Network | None = None,
        reverse: Callable[[str], str | None] | None = None,
    ) -> None:
        self.domain = domain.lower().rstrip(".")
        self.lookup = lookup  # instance name -> IPv4 address
        self.reverse = reverse  # IPv4 address -> instance name
        self.subnet = subnet
        self.upstreams = list(upstreams)

    async def answer(self, packet: bytes, *, tcp: bool = False) -> bytes | None:
        try:
            q = parse_query(packet)
        except MalformedQuery:
            return error_for(packet, RCODE_FORMERR)
        if (q.flags >> 11) & 0xF:  # not a standard query
            return build_answer(q, RCODE_NOTIMP, authoritative=False)
        local = self._local(q)
        if local is not None:
            return local
        return await self._forward(q, packet, tcp=tcp)

    def _local(self, q: Question) -> bytes | None:
        """An answer from the leases, or None when the name is not ours."""
        if q.name == self.domain or q.name.endswith("." + self.domain):
            host = q.name[: -len(self.domain)].rstrip(".")
            ip = self.lookup(host) if host and "." not in host else None
            if ip is None and host:
                return build_answer(q, RCODE_NXDOMAIN, authoritative=True)
            records = []
            if ip is not None and q.qtype in (TYPE_A, TYPE_ANY) and q.qclass == CLASS_IN:
                records.append((TYPE_A, ipaddress.IPv4Address(ip).packed))
            return build_answer(q, RCODE_OK, records, authoritative=True)
        address = self._ptr_address(q.name)
        if address is not None:
            name = self.reverse(address) if self.reverse else None
            if name is None:
                return build_answer(q, RCODE_NXDOMAIN, authoritative=True)
            records = [(TYPE_PTR, encode_name(f"{name}.{self.domain}"))] if q.qtype in (
                TYPE_PTR, TYPE_ANY) else []  # fmt: skip
            return build_answer(q, RCODE_OK, records, authoritative=True)
        return None

    def _ptr_address(self, name: str) -> str | None:
        """The address of ``d.c.b.a.in-addr.arpa`` if it lies in our subnet."""
        suffix = ".in-addr.arpa"
        if self.subnet is None or not name.endswith(suffix):
            return None
        parts = name.removesuffix(suffix).split(".")
        try:
            address = ipaddress.IPv4Address(".".join(reversed(parts)))
        except ValueError:
            return None
        return str(address) if address in self.subnet else None

    async def _forward(self, q: Question, packet: bytes, *, tcp: bool) -> bytes:
        for upstream in self.upstreams:
            try:
                relay = _relay_tcp if tcp else _relay_udp
                reply = await asyncio.wait_for(relay(upstream, packet), UPSTREAM_TIMEOUT)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("dns: upstream %s:%d failed: %r", *upstream, exc)
                continue
            if len(reply) >= 2 and reply[:2] == packet[:2]:
                return reply
        return build_answer(q, RCODE_SERVFAIL, authoritative=False)


async def _relay_udp(upstream: Address, packet: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(upstream)
        await loop.sock_sendall(sock, packet)
        while True:  # skip stray datagrams that do not answer this query
            reply = await loop.sock_recv(sock, _MAX_UDP)
            if reply[:2] == packet[:2]:
                return reply


async def _relay_tcp(upstream: Address, packet: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(struct.pack("!H", len(packet)) + packet)
        await writer.drain()
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(length)
    finally:
        writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, resolver: DnsResolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._reply(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.resolver.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsServer:
    """The resolver served over UDP and TCP on each of ``listen`` (ip, port)."""

    def __init__(self, resolver: DnsResolver, listen: Sequence[Address]) -> None:
        self.resolver = resolver
        self.listen = list(listen)
        self._udp: list[tuple[asyncio.DatagramTransport, _UdpProtocol]] = []
        self._tcp: list[asyncio.Server] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for host, port in self.listen:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self.resolver), local_addr=(host, port)
                )
                self._udp.append((transport, protocol))
                port = transport.get_extra_info("sockname")[1]  # the same port for TCP
                server = await asyncio.start_server(self._serve_tcp, host, port)
                self._tcp.append(server)
        except OSError:
            await self.stop()
            raise

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # a client may send several queries on one connection
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = await self.resolver.answer(await reader.readexactly(length), tcp=True)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def addresses(self) -> list[Address]:
        """Where it really listens (port 0 in ``listen`` picks a free port)."""
        return [t.get_extra_info("sockname")[:2] for t, _ in self._udp]

    async def stop(self) -> None:
        for transport, protocol in self._udp:
            transport.close()
            for task in list(protocol.tasks):
                task.cancel()
        for server in self._tcp:
            server.close()
            await server.wait_closed()
        self._udp.clear()
        self._tcp.clear()
