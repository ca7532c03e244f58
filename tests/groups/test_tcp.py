"""The TCP (L4) path over stand-in instances whose "guests" are asyncio echo servers
on loopback addresses: echo through the proxy, the hard limit's immediate close, the
soft limit's wake, wake on connect (one restore for a burst), open connections as
activity, a port clash refused by name, and TLS ended at the proxy."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ember.errors import Conflict
from ember.groups import CreateServiceGroupRequest, GroupManager, MemberRecord
from ember.groups.models import ScaleToZero
from ember.instances import State
from ember.instances.models import InstanceRecord
from ember.store import Store
from tests.groups.test_wake import Ingresses, Instances
from tests.ukc.pem import self_signed

GUEST_PORT = 7000  # each stand-in guest is an echo server on its own 127.0.0.x
UDP_IDLE = 0.5  # seconds without a datagram that end a UDP flow here


class Guests(Instances):
    """Instances whose addresses are 127.0.0.2, .3, ...: each with a real echo server."""

    def __init__(self) -> None:
        super().__init__()
        self.standbys: list[str] = []

    def lease(self, record: InstanceRecord) -> Any:
        index = sorted(self.records).index(record.id)
        return type("Lease", (), {"ip": f"127.0.0.{index + 2}"})()

    async def standby(self, ref: str, origin: str = "user") -> InstanceRecord:
        self.standbys.append(ref)
        self.records[ref].state = State.STANDBY
        return self.records[ref]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


async def echo_server(ip: str, protocol: str) -> Any:
    if protocol == "tcp":
        return await asyncio.start_server(echo, ip, GUEST_PORT)
    loop = asyncio.get_running_loop()
    return (await loop.create_datagram_endpoint(UdpEcho, local_addr=(ip, GUEST_PORT)))[0]


@asynccontextmanager
async def tcp_group(
    tmp_path: Path,
    names: dict[str, State],
    handlers: tuple[str, ...] = (),
    protocol: str = "tcp",
    **fields: Any,
) -> AsyncIterator[tuple[GroupManager, Guests, int]]:
    """A group of one TCP (or UDP) service over stand-in guests that echo."""
    guests, port = Guests(), free_port()
    records = [guests.add(name, state) for name, state in names.items()]
    servers = [await echo_server(guests.lease(r).ip, protocol) for r in records]
    stand_in: Any = guests
    ingresses = Ingresses(tmp_path / "caddy")
    manager = GroupManager(Store(tmp_path / "db"), stand_in, ingresses, tmp_path / "w.sock")  # type: ignore[arg-type]
    manager.l4.udp_idle_seconds = UDP_IDLE
    service = {"port": port, "destination_port": GUEST_PORT, "handlers": list(handlers),
               "protocol": protocol}  # fmt: skip
    body = {"name": "db", "services": [service], **fields}
    group = await manager.create(CreateServiceGroupRequest.model_validate(body))
    policy = ScaleToZero(policy="idle", cooldown_time_ms=0)
    for record in records:
        member = MemberRecord(id=record.id, name=record.name, group_id=group.id,
                              scale_to_zero=policy)  # fmt: skip
        manager.members.insert(member)
    try:
        yield manager, guests, port
    finally:
        await manager.close()
        for server in servers:
            server.close()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"ping\n")
    await writer.drain()
    return await asyncio.wait_for(reader.readline(), 10)


def test_echo_through_the_proxy_and_the_hard_limit_closes_at_once(tmp_path: Path) -> None:
    async def scenario() -> tuple[bytes, bytes, bytes]:
        async with tcp_group(tmp_path, {"a": State.RUNNING}, hard_limit=1) as (manager, _, port):
            first = await connect(port)
            echoed = await roundtrip(*first)
            second_reader, second = await connect(port)
            refused = await asyncio.wait_for(second_reader.read(), 10)  # closed: EOF
            second.close()
            first[1].close()
            await asyncio.sleep(0.1)
            assert manager.l4.connections() == {}
            again = await roundtrip(*await connect(port))
            return echoed, refused, again

    assert asyncio.run(scenario()) == (b"ping\n", b"", b"ping\n")


def test_a_burst_to_an_asleep_tcp_group_restores_once_and_is_served(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[bytes], int, dict[str, int]]:
        async with tcp_group(tmp_path, {"a": State.STANDBY}) as (manager, guests, port):
            clients = await asyncio.gather(*(connect(port) for _ in range(5)))
            answers = await asyncio.gather(*(roundtrip(*c) for c in clients))
            counts = manager.l4.connections()
            return answers, guests.restores, counts

    answers, restores, counts = asyncio.run(scenario())
    assert answers == [b"ping\n"] * 5 and restores == 1 and counts == {"127.0.0.2:7000": 5}


def test_the_soft_limit_wakes_another_instance_least_connections_after(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, dict[str, int]]:
        names = {"a": State.RUNNING, "b": State.STANDBY}
        async with tcp_group(tmp_path, names, soft_limit=1, hard_limit=3) as (manager, guests, p):
            clients = [await connect(p)]
            await roundtrip(*clients[-1])
            clients.append(await connect(p))  # a is at the soft limit: wakes b
            await roundtrip(*clients[-1])
            clients.append(await connect(p))  # both at soft: either, up to the hard limit
            await roundtrip(*clients[-1])
            return guests.restores, manager.l4.connections()

    restores, counts = asyncio.run(scenario())
    assert restores == 1 and sorted(counts.values()) == [1, 2], counts


def test_an_open_connection_keeps_its_instance_awake(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        async with tcp_group(tmp_path, {"a": State.RUNNING}) as (manager, guests, port):
            reader, writer = await connect(port)
            await roundtrip(reader, writer)
            for _ in range(3):  # cooldown 0: only the open connection keeps it up
                await manager._pass()
            during = list(guests.standbys)
            writer.close()
            await asyncio.sleep(0.1)
            await manager._pass()
            return during, guests.standbys

    during, after = asyncio.run(scenario())
    assert during == [] and after == ["id-a"]


def test_a_taken_port_is_refused_by_name_and_nothing_is_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with tcp_group(tmp_path, {"a": State.RUNNING}) as (manager, _, port):
            with socket.socket() as holder:
                holder.bind(("127.0.0.1", 0))
                holder.listen()
                taken = holder.getsockname()[1]
                service = {"port": taken, "destination_port": 1, "handlers": []}
                request = CreateServiceGroupRequest.model_validate(
                    {"name": "other", "services": [service]}
                )
                with pytest.raises(Conflict) as caught:
                    await manager.create(request)
                assert caught.value.code == "port_in_use"
                assert [g.name for g in manager.find()] == ["db"]
            http = {"name": "web", "services": [{"port": port}], "domains": [{"name": "a.test"}]}
            with pytest.raises(Conflict) as clash:  # an HTTP group on the TCP port
                await manager.create(CreateServiceGroupRequest.model_validate(http))
            assert clash.value.code == "port_in_use"

    asyncio.run(scenario())


def store_certificate(caddy_storage: Path, name: str) -> str:
    """A certificate for `name` where Caddy keeps the ones it issued; its PEM."""
    chain, key = self_signed(name)
    where = caddy_storage / "certificates" / "local" / name
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{name}.crt").write_text(chain)
    (where / f"{name}.key").write_text(key)
    return chain


async def tls_connect(port: int, trusted: str, name: str | None) -> tuple[Any, Any, str]:
    """A TLS connection (SNI `name`; None: none sent) and the served certificate's CN."""
    context = ssl.create_default_context(cadata=trusted)
    context.check_hostname = name is not None
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=name or ""
    )
    subject = dict(pair[0] for pair in writer.get_extra_info("peercert")["subject"])
    return reader, writer, subject["commonName"]


def test_a_tls_service_ends_tls_with_the_certificate_caddy_keeps(tmp_path: Path) -> None:
    """handlers ["tls"]: TLS ends at the proxy, plain bytes reach the guest; the
    certificate is picked by SNI, the group's domain without one; an unknown name is
    refused at the handshake; a renewed file is served at the next handshake."""

    async def scenario() -> None:
        first = store_certificate(tmp_path / "caddy", "db.test")
        domains = [{"name": "db.test"}]
        group = tcp_group(tmp_path, {"a": State.STANDBY}, ("tls",), domains=domains)
        async with group as (_, guests, port):
            reader, writer, served = await tls_connect(port, first, "db.test")
            assert (served, await roundtrip(reader, writer)) == ("db.test", b"ping\n")
            assert guests.restores == 1  # woken by the first connection, as plain TCP
            reader, writer, served = await tls_connect(port, first, None)
            assert (served, await roundtrip(reader, writer)) == ("db.test", b"ping\n")
            with pytest.raises(OSError):  # an alert, or the reset after it
                await tls_connect(port, first, "other.test")
            renewed = store_certificate(tmp_path / "caddy", "db.test")
            with pytest.raises(ssl.SSLCertVerificationError):  # the new one is served
                await tls_connect(port, first, "db.test")
            assert (await tls_connect(port, renewed, "db.test"))[2] == "db.test"

    asyncio.run(scenario())
